"""Checks made before anything is created: every problem of a run's inputs and outputs in one error.

A command that starts work (``run``, ``search``, ``evaluate``, ``dpo``, ``mtbench``) calls these in the
driver process before it creates a run folder, a study or an output, so a bad input costs seconds and leaves
nothing behind. Each function returns a list of problems (empty: fine); :func:`raise_problems` turns them into
one :class:`~objectives.errors.UserError`.

* :func:`run_problems`: a run config as a whole: source models (folders, safetensors headers, architectures,
  shapes), tasks (exist, enough documents), the storage URL, the Ray address, the run folder (writable, not
  inside a source model, owned by this config).
* :func:`storage_problems`, :func:`ray_problems`, :func:`output_problems`: one input or output each.
* :func:`owner_problems`: a run folder belongs to the config that made it (``resolved.yaml``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import optuna
import yaml

from objectives.errors import UserError, first_line
from objectives.objective import Objective
from objectives.schema import schema_default
from objectives.templates import resolve_chat_template
from search.config import RunConfig
from search.merge.sources import has_chat_template, is_local, source_problems
from search.rundir import STAGES, RunDir, TrialAttr

__all__ = [
    "LATER_SECTIONS",
    "RESOURCE_KEYS",
    "config_diff",
    "device_problems",
    "local_models",
    "output_problems",
    "owner_problems",
    "raise_problems",
    "ray_problems",
    "run_problems",
    "stage_input_problems",
    "storage_problems",
    "study_fingerprint",
    "study_owner_problems",
    "template_problems",
]

# Sections that only later stages read: changing them leaves the study valid (redo with --from STAGE).
LATER_SECTIONS = {"dpo": "dpo", "mtbench": "mtbench", "pipeline": "heldout"}
# How much is run, not what a trial computes: a search may be extended or run wider with another value.
RESOURCE_KEYS = {"search.n_trials", "search.workers", "search.worker_cpus", "search.worker_gpus",
                 "search.max_retries", "search.max_failures_in_a_row",
                 "objective.threads"}  # trials run at Ray's pinning; only held-out/evaluate read it


def raise_problems(problems: list[str], what: str) -> None:
    """One :class:`UserError` listing every problem (nothing when the list is empty)."""
    if len(problems) == 1:
        raise UserError(f"{what}: {problems[0]}")
    if problems:
        raise UserError(f"{what}: {len(problems)} problems: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------ pieces


def storage_problems(url: str, *, creating: Path | None = None) -> list[str]:
    """A storage URL that Optuna cannot use: not a URL, no driver installed, a missing folder, a damaged or
    unreachable database. ``creating``: the run folder that will hold a default SQLite file (may not exist)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    where = f"search.storage {url!r}"
    if "://" not in url:
        return [f"{where} is not a URL: use sqlite:///PATH/study.db or postgresql://USER@HOST/DB"]
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as err:
        return [f"{where} cannot be parsed ({err}): use sqlite:///PATH/study.db or postgresql://USER@HOST/DB"]
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_problems(where, parsed.database, creating)
    try:
        engine = sqlalchemy.create_engine(url, connect_args=_timeout(parsed))
        with engine.connect():
            pass
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
        return [f"{where}: its database driver is not installed ({err}): pip install the driver (for PostgreSQL: "
                "pip install 'merge-search[postgres]')"]
    except sqlalchemy.exc.SQLAlchemyError as err:
        return [f"{where}: cannot connect ({first_line(err)}): check host, port, user and database"]
    return []


def _timeout(parsed) -> dict:
    return {"connect_timeout": 10} if parsed.get_backend_name() in ("postgresql", "mysql") else {}


def _sqlite_problems(where: str, database: str | None, creating: Path | None) -> list[str]:
    import sqlite3

    if not database or database == ":memory:":
        return [f"{where} is an in-memory database, lost when the driver ends: give a file, sqlite:///PATH.db"]
    path = Path(database)
    if path.is_dir():
        return [f"{where} names a folder: give a file inside it, e.g. {path / 'studies.db'}"]
    if path.exists():
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
                con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as err:
            return [f"{where}: {path} is not a readable SQLite database ({err}): restore it, or use another "
                    "--out / search.storage"]
        return []
    folder = path.parent
    if not folder.is_dir() and not (creating is not None and _inside(folder, creating)):
        return [f"{where}: folder {str(folder)!r} does not exist: create it, or point the URL elsewhere"]
    return []


def ray_problems(address: str | None, timeout: float = 5.0) -> list[str]:
    """A Ray address that does not answer within ``timeout`` seconds (None: a private local Ray, fine)."""
    if not address:
        return []
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or _local_head()
        if not target:
            return ["--address auto: no Ray cluster runs on this machine: start one (ray start --head), set "
                    "RAY_ADDRESS, or pass HOST:PORT of its head"]
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return [f"--address {address!r}: expected HOST:PORT of a Ray head (e.g. 10.0.0.1:6379) or 'auto'"]
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        return [f"--address {address!r}: no Ray head answers at {host}:{port} within {timeout:.0f} s "
                f"({err.strerror or err}): start it (ray start --head --port {port}) or fix the address"]
    return []


def _local_head() -> str | None:
    """The address of the Ray head this machine started last (what ``ray.init(address='auto')`` finds)."""
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    return current.read_text(encoding="utf-8").strip() or None if current.is_file() else None


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def _writable(path: Path) -> str | None:
    """Why ``path`` (a folder, maybe not there yet) cannot be created or written, or None."""
    p = Path(path).expanduser().absolute()
    existing = next((a for a in [p, *p.parents] if a.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{str(existing or p)!r} is not a folder"
    try:  # by trying: permission bits say nothing about read-only mounts or /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"{str(existing)!r} is not writable ({err.strerror or err})"
    return None


def output_problems(out: str | Path, *, what: str, inputs: list[str | Path] = (), own: set[str] | None = None,
                    marker: str | None = None, file: bool = False) -> list[str]:
    """An output that would damage something: ``out`` is or lies inside one of the ``inputs`` (source models, a
    run's storage), cannot be written, or (a folder) is not empty and not an earlier output of the same command:
    one holding ``marker``, or only names in ``own``."""
    out = Path(out)
    problems = [f"{what} {str(out)!r} is inside the input {str(i)!r}: outputs never overwrite inputs; choose "
                "another folder" for i in inputs if i is not None and _inside(out, Path(i))]
    reason = _writable(out.parent if file else out)
    if reason:
        problems.append(f"{what} {str(out)!r}: {reason}: choose a writable place")
    if file and out.is_dir():
        problems.append(f"{what} {str(out)!r} is a folder: give a file name")
    if not file and out.is_dir() and not (marker and (out / marker).exists()) and (own is not None or marker):
        foreign = sorted(p.name for p in out.iterdir() if own is None or p.name not in own)
        if foreign:
            problems.append(f"{what} {str(out)!r} is not empty and not an earlier output of this command (it holds "
                            f"{', '.join(foreign[:3])}): choose a new or empty folder")
    return problems


def local_models(models: list[str]) -> list[str]:
    """The local folders among model references (hub ids are never written to)."""
    return [m for m in models if is_local(m)]


# ------------------------------------------------------------------------------------------------ run folders


_ABSENT = object()


def config_diff(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain run-config trees. A key the stored (``old``) tree
    lacks is no difference when the new one holds its schema default: a key added to the schema later does
    not make an older run folder or study another config's."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new), key=str)
                for k in config_diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.")]
    key = prefix.rstrip(".")
    if old is _ABSENT and new == schema_default(RunConfig, key):
        return []
    old, new = (None if v is _ABSENT else v for v in (old, new))
    return [] if old == new else [key]


def _as_read_back(cfg: RunConfig) -> dict:
    """``cfg`` as plain data, exactly as its saved ``resolved.yaml`` reads back (what comparisons compare)."""
    return yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))


def study_fingerprint(cfg: RunConfig) -> dict:
    """The keys of ``cfg`` that decide what a study's trials mean (not later stages, not how much is run)."""
    data = _as_read_back(cfg)
    for section in LATER_SECTIONS:
        data.pop(section, None)
    for key in RESOURCE_KEYS | {"search.storage", "search.study_name"}:  # where the study is, not what it holds
        section, name = key.split(".")
        data.get(section, {}).pop(name, None)
    return data


def study_owner_problems(cfg: RunConfig, url: str) -> list[str]:
    """A study in the storage that another config made (its recorded fingerprint differs): its trials would
    be mixed with this config's. Reads an existing database only (never creates one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return []
    name = cfg.search.study_name or cfg.name
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return []
    recorded = study.user_attrs.get(TrialAttr.STUDY_CONFIG)
    keys = config_diff(recorded, study_fingerprint(cfg)) if recorded is not None else []
    if keys:
        return [f"study {name!r} in {url} was made by a different config: {_keys(keys)} differ, so its trials "
                "would be mixed: set search.study_name to a new name, or use another storage"]
    return []


def owner_problems(cfg: RunConfig, run: RunDir, *, redo: str | None = None) -> list[str]:
    """A run folder made by another config: keys that change what the study holds are refused always; keys of
    later stages need ``redo`` (the first stage re-run, ``--from``/``--only``) at or before their stage."""
    if not run.resolved_config.is_file():
        return []
    old = yaml.safe_load(run.resolved_config.read_text(encoding="utf-8"))
    new = _as_read_back(cfg)
    keys = [k for k in config_diff(old, new) if k not in RESOURCE_KEYS]
    study_keys = [k for k in keys if k.split(".")[0] not in LATER_SECTIONS]
    where = f"run folder {str(run.root)!r} was made with a different config (see its {run.resolved_config.name})"
    if study_keys:
        return [f"{where}: {_keys(study_keys)} differ, which changes what its study holds: use another --out"]
    later = sorted({LATER_SECTIONS[k.split(".")[0]] for k in keys}, key=STAGES.index)
    if later and (redo is None or STAGES.index(redo) > STAGES.index(later[0])):
        return [f"{where}: {_keys(keys)} differ: redo the stages they affect with `merge-search run CONFIG "
                f"--from {later[0]}` (or use another --out)"]
    return []


def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def run_problems(cfg: RunConfig, run: RunDir, *, address: str | None = None, redo: str | None = None,
                 models: bool = True, tasks: bool = True) -> list[str]:
    """Every problem of running ``cfg`` into ``run`` (see the module docstring)."""
    problems = owner_problems(cfg, run, redo=redo)
    problems += output_problems(run.root, what="run folder", inputs=local_models(cfg.space.model_paths()))
    if models:
        problems += source_problems(cfg.space.base_model, [m.model for m in cfg.space.models], device=cfg.device,
                                    vocabulary=cfg.space.vocabulary_source)
    if tasks:
        try:
            Objective(cfg.objective)
        except UserError as err:
            problems.append(str(err))
    storage = storage_problems(run.storage_url(cfg.search.storage), creating=run.root)
    problems += storage or study_owner_problems(cfg, run.storage_url(cfg.search.storage))
    problems += ray_problems(address)
    problems += device_problems(cfg, address)
    field, tok = (("space.tokenizer.source", cfg.space.tokenizer.source) if cfg.space.tokenizer
                  else ("space.tokenizer_source", cfg.space.tokenizer_source))
    if tok and tok not in ("base", "union") and is_local(tok) and not Path(tok).expanduser().is_dir():
        problems.append(f"{field} {tok!r} is not a folder: give a model folder, 'base' or 'union'")
    return problems


def device_problems(cfg: RunConfig, address: str | None) -> list[str]:
    """GPUs asked for that a local run does not have (a cluster's GPUs are its own business)."""
    import torch

    if address:
        return []
    gpus = torch.cuda.device_count()
    problems = []
    if cfg.device == "cuda" and gpus == 0:
        problems.append("device is 'cuda' but torch sees no CUDA device here: set device: cpu (or auto), or pass "
                        "--address of a GPU cluster")
    if cfg.search.worker_gpus and cfg.search.worker_gpus > gpus:
        problems.append(f"search.worker_gpus {cfg.search.worker_gpus} but this machine has {gpus} GPU(s): a local "
                        "search would wait forever; lower it, or pass --address of a GPU cluster")
    return problems


def stage_input_problems(cfg: RunConfig, stages: list[str]) -> list[str]:
    """Inputs of later stages that can be checked before the search starts: the DPO data and the MT-Bench
    questions (local files must exist)."""
    problems = []
    if "dpo" in stages:
        for key, source in (("dpo.data.train", cfg.dpo.data.train), ("dpo.data.heldout", cfg.dpo.data.heldout)):
            if source is None and key == "dpo.data.train":
                problems.append(f"{key} is not set: give the preference pairs the DPO stage trains on")
            elif source and (source.startswith((".", "/", "~")) or Path(source).suffix) and not Path(source).is_file():
                problems.append(f"{key} {source!r} does not exist: give a .json/.jsonl/.parquet file or a dataset id")
    if "mtbench" in stages:
        q = cfg.mtbench.questions
        if q is None:
            problems.append("mtbench.questions is not set: give a FastEval .json, FastChat .jsonl or dataset id")
        elif (q.startswith((".", "/", "~")) or Path(q).suffix) and not Path(q).is_file():
            problems.append(f"mtbench.questions {q!r} does not exist: give a question file or a dataset id")
        try:
            resolve_chat_template(cfg.mtbench.chat_template, "mtbench.chat_template")
        except UserError as err:
            problems.append(str(err))
    return problems + template_problems(cfg, stages)


def template_problems(cfg: RunConfig, stages: list[str]) -> list[str]:
    """Models the MT-Bench or DPO stage would meet without a chat template and without a setting for one. The
    merge's template is ``space.chat_template``, else that of the model its tokenizer comes from."""
    space = cfg.space
    found = {m: has_chat_template(m) for m in space.model_paths()}  # each source's tokenizer, read once
    source = space.vocabulary_source
    donor = source if source not in (None, "base", "union") else space.base_model
    if space.chat_template == "auto":  # mergekit picks the sources' most common template: any will do
        merge = True if any(found.values()) else None if None in found.values() else False
    else:
        merge = True if space.chat_template else found[donor] if donor in found else has_chat_template(donor)
    problems = []
    if "mtbench" in stages and cfg.mtbench.chat_template in (None, "model"):
        asked = {"the merge": merge}
        if cfg.pipeline.mtbench_sources:
            asked |= found
        lacking = [name for name, has in asked.items() if has is False]
        if lacking:
            problems.append(f"mtbench.chat_template is not set but these models have no chat template: "
                            f"{', '.join(lacking)}: set mtbench.chat_template (chatml, a Jinja template or a .jinja "
                            "file; models with their own template keep it)")
    if "dpo" in stages and cfg.dpo.chat_template == "model" and merge is False:
        problems.append(f"dpo.chat_template is 'model' but the merge will have no chat template ({donor!r} has none "
                        "and space.chat_template is not set): set space.chat_template, or dpo.chat_template to chatml")
    return problems
