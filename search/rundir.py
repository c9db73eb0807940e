"""The contract between stages: every path of a run folder and the records the stages hand each other.

A run folder (``results/<name>`` by default) is the only place stages meet. Nothing outside this module spells
one of its file names or a trial's user-attribute key; stages ask :class:`RunDir` for a path and read a trial
through :class:`TrialRecord`.

::

    RUN/run.json                    the manifest: storage URL and study name (RunManifest)
    RUN/resolved.yaml               the resolved run config that made the folder
    RUN/study.db, artifacts/        the Optuna study (default storage) and each trial's recipe artifact
    RUN/summary.json                what the last search run did
    RUN/heldout.json, heldout.md    sources, hand recipes and the top trials on the search and test splits
    RUN/best.yaml, best.json        the winner as a stock mergekit recipe + its TrialRecord sidecar
    RUN/dpo/                        DPOOutputs: base/ (re-merged winner), adapter/, model/, metrics.json, ...
    RUN/mtbench/<model>/            one MT-Bench run per model, comparison.{md,png} beside them
    RUN/report.md, plots/           the report; ship.json (the model to ship), model-card.md
    RUN/stages/<stage>.json         completion markers of ``merge-search run``

Records: :class:`TrialAttr` names every user attribute a trial carries (set by the driver, and from a worker's
:class:`search.driver.RungReport` after each rung); :class:`TrialRecord` is what later stages read
back from a trial or from ``best.json`` (recipe, merge seed, device, threads, ``weights_sha256``, scores):
:func:`search.merge.export.remerge` turns one back into the scored weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from objectives.schema import load_json

__all__ = [
    "DPOOutputs",
    "RunDir",
    "RunManifest",
    "TrialAttr",
    "TrialRecord",
]




class TrialAttr:
    """Names of the Optuna user attributes a trial carries (the study's side of the contract)."""

    ATTEMPT = "attempt"  # 0 for a fresh trial, k for the k-th retry of the same parameters
    RETRY_OF = "retry_of"  # number of the failed trial these parameters come from
    SEED = "seed"  # merge seed: ``mergekit-yaml recipe.yaml OUT --random-seed <seed>`` re-merges the trial
    FAIL_REASON = "fail_reason"
    WORKER = "worker"  # set when the trial is dispatched: its parameters are complete
    NODE = "node"
    WARM_START = "warm_start"  # index of the hand recipe a warm-start trial came from
    RECIPE = "recipe"  # the trial's mergekit YAML
    RECIPE_ARTIFACT = "recipe_artifact_id"
    ITEMS = "items_evaluated"
    RUNG = "rung"  # last rung of successive halving reached (trials of studies before the rename: "stage")
    TRIAL_SECONDS = "trial_seconds"
    WEIGHTS_SHA256 = "weights_sha256"
    MERGE_SECONDS = "merge_seconds"
    MERGE_DEVICE = "merge_device"
    MERGE_THREADS = "merge_threads"
    EVAL_SECONDS = "eval_seconds"
    SCORES = "scores"
    STDERR = "stderr"
    ITEMS_PER_TASK = "items_per_task"
    VIOLATIONS = "violations"
    SECONDARY = "secondary"
    STARTED = "started"
    ENDED = "ended"
    ESTIMATE = "estimate"  # {"value", "stderr", "items", "tasks"}: full-subset estimate after the last rung run
    STUDY_WARM_ENQUEUED = "warm_start_enqueued"  # a *study* attribute: hand recipes were enqueued
    STUDY_CONFIG = "merge_search_config"  # a *study* attribute: the config keys that decide what its trials mean
    STUDY_SOURCES = "merge_search_sources"  # a *study* attribute: {source path: source_fingerprint} at creation


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class TrialRecord:
    """A scored (or to-be-merged) candidate: everything needed to re-create its weights, and what it scored.

    ``recipe`` is the mergekit YAML text; ``seed``, ``merge_device`` and ``merge_threads`` reproduce the DARE
    masks and CPU reduction order; ``weights_sha256`` (when known) is what a re-merge must hash to. A trial
    recorded without a merge device (a study written by hand or by another tool) is taken as merged on the CPU,
    and one without a thread count as merged with torch's current count. ``parsed`` is ``recipe`` parsed and
    validated (a :class:`search.merge.Recipe`), once something built it (:func:`search.merge.record_of`,
    :func:`search.merge.with_recipe`): a re-merge uses it instead of parsing the text again.
    """

    recipe: str
    seed: int
    merge_device: str = "cpu"
    merge_threads: int | None = None
    weights_sha256: str | None = None
    number: int | None = None
    study: str | None = None
    state: str | None = None
    value: float | list[float] | None = None
    scores: dict[str, float] | None = None
    stderr: dict[str, float] | None = None
    items_evaluated: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # how error messages name the record ("trial 7", "best.yaml", ...)
    parsed: Any = field(default=None, compare=False, repr=False)  # search.merge.Recipe of ``recipe``, or None

    @classmethod
    def from_trial(cls, trial, study_name: str | None = None) -> TrialRecord:
        """The record of an Optuna trial; a trial without a recorded recipe or seed is a :class:`UserError`."""
        ua = trial.user_attrs
        if not ua.get(TrialAttr.RECIPE) or ua.get(TrialAttr.SEED) is None:
            raise UserError(f"trial {trial.number} has no recorded recipe and seed (user attributes "
                            f"{TrialAttr.RECIPE!r}, {TrialAttr.SEED!r}): it cannot be re-merged or exported; "
                            "pick another trial")
        values = trial.values
        return cls(recipe=ua[TrialAttr.RECIPE], seed=int(ua[TrialAttr.SEED]),
                   merge_device=ua.get(TrialAttr.MERGE_DEVICE) or cls.merge_device,
                   merge_threads=ua.get(TrialAttr.MERGE_THREADS), weights_sha256=ua.get(TrialAttr.WEIGHTS_SHA256),
                   number=trial.number, study=study_name, state=trial.state.name,
                   value=values if values is None or len(values) > 1 else values[0],
                   scores=ua.get(TrialAttr.SCORES), stderr=ua.get(TrialAttr.STDERR),
                   items_evaluated=ua.get(TrialAttr.ITEMS), params=dict(trial.params),
                   label=f"trial {trial.number}")

    def reproduce_command(self, recipe_file: str) -> str:
        """The stock ``mergekit-yaml`` command that re-creates the weights from ``recipe_file``."""
        threads = f"OMP_NUM_THREADS={self.merge_threads} " if self.merge_threads and self.merge_device == "cpu" else ""
        cuda = " --cuda" if self.merge_device.startswith("cuda") else ""
        return f"{threads}mergekit-yaml {recipe_file} OUT --random-seed {self.seed}{cuda}"

    def sidecar(self, recipe_file: str, versions: dict[str, str], recipe_text: str | None = None) -> dict[str, Any]:
        """The JSON sidecar of an exported recipe (``best.json``): the record without its recipe text, plus the
        sha256 of the recipe file's text (``recipe_text``, default the record's recipe) so that a recipe and a
        sidecar of two different exports are never read as one."""
        from dataclasses import replace

        data = {k: v for k, v in asdict(replace(self, parsed=None)).items()
                if k not in ("recipe", "number", "label", "parsed")}
        text = self.recipe if recipe_text is None else recipe_text
        return {"trial": self.number, **data, "versions": versions,
                "reproduce": self.reproduce_command(recipe_file), "recipe_sha256": _sha256(text)}

    @classmethod
    def load_export(cls, recipe_file: str | Path) -> TrialRecord:
        """The record of an exported recipe: ``FILE.yaml`` plus its ``FILE.json`` sidecar."""
        recipe_file = Path(recipe_file)
        side = load_json(recipe_file.with_suffix(".json"), "export the trial first (merge-search export)")
        if not recipe_file.is_file():
            raise UserError(f"{str(recipe_file)!r} does not exist: export the trial first (merge-search export)")
        if not isinstance(side, dict) or "reproduce" not in side or side.get("seed") is None:
            raise UserError(f"{recipe_file.with_suffix('.json')}: not the sidecar of an exported trial (no seed / "
                            "reproduce): export the trial again (merge-search export)")
        text = recipe_file.read_text(encoding="utf-8")
        if side.get("recipe_sha256") not in (None, _sha256(text)):
            raise UserError(f"{str(recipe_file)!r} and its sidecar {recipe_file.with_suffix('.json').name} are not "
                            "from one export (an export was interrupted, or one of them was edited): export the "
                            "trial again (merge-search export, or re-run from stage 'export')")
        known = {k: side[k] for k in cls.__dataclass_fields__ if k in side and k != "parsed"}
        return cls(**{**known, "recipe": text, "number": side.get("trial"), "label": recipe_file.name})


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ folders


@dataclass(frozen=True)
class DPOOutputs:
    """The files of one DPO run (``RUN/dpo`` in a pipeline, ``--out`` of ``merge-search dpo``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def names(self) -> set[str]:
        """Every name this layout writes into ``root`` (an earlier, unfinished run may be replaced)."""
        return {getattr(self, p).name for p, v in vars(type(self)).items() if isinstance(v, property)}

    @property
    def base(self) -> Path:  # the re-merged model DPO starts from (pipeline, --recipe)
        return self.root / "base"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:  # the merged full model + tokenizer
        return self.root / "model"

    @property
    def trainer(self) -> Path:
        return self.root / "trainer"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def loss_png(self) -> Path:
        return self.root / "loss.png"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def log_history(self) -> Path:
        return self.root / "log_history.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"


@dataclass(frozen=True)
class RunManifest:
    """``RUN/run.json``: where the study lives, so every command can find it from the folder alone."""

    storage: str | None  # None: the folder's own study.db (so a moved or copied folder keeps working)
    study_name: str


@dataclass(frozen=True)
class RunDir:
    """Every path of one run folder (see the module docstring for the layout)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, folder: str | Path | None, name: str) -> RunDir:
        """The run folder ``folder``, or by default ``results/<name>`` (relative to the working directory)."""
        return cls(Path(folder) if folder is not None else Path("results") / name)

    # the study
    @property
    def study_db(self) -> Path:
        return self.root / "study.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def upload(self) -> Path:  # staging folder of artifact uploads
        return self.root / ".upload"

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def resolved_config(self) -> Path:
        return self.root / "resolved.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def item_matrix(self) -> Path:  # the sources' per-item scores (objective.selection: informative)
        return self.root / "item_matrix.json"

    # the later stages
    @property
    def heldout_json(self) -> Path:
        return self.root / "heldout.json"

    @property
    def heldout_md(self) -> Path:
        return self.root / "heldout.md"

    @property
    def best_yaml(self) -> Path:
        return self.root / "best.yaml"

    @property
    def dpo(self) -> DPOOutputs:
        return DPOOutputs(self.root / "dpo")

    @property
    def mtbench(self) -> Path:
        return self.root / "mtbench"

    def mtbench_model(self, name: str) -> Path:
        return self.mtbench / name.replace("+", "_").replace(":", "_")

    @property
    def mtbench_kinds(self) -> Path:  # {model name: source | recipe | merge | merge+dpo} of the rated models
        return self.mtbench / "models.json"

    @property
    def comparison_md(self) -> Path:
        return self.mtbench / "comparison.md"

    @property
    def comparison_png(self) -> Path:
        return self.mtbench / "comparison.png"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def chat_judgements(self) -> Path:  # objective.chat's judgement cache, shared by the search's workers
        return self.root / "chat-judgements.jsonl"

    @property
    def model_card(self) -> Path:  # the exported winner's card (recipe, sources and licences, scores)
        return self.root / "model-card.md"

    @property
    def ship_json(self) -> Path:  # the model to ship and why (search.stages.verdict.ShipDecision)
        return self.root / "ship.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def marker(self, stage: str) -> Path:
        """The completion marker of a pipeline stage."""
        return self.root / "stages" / f"{stage}.json"

    # storage
    def default_storage_url(self) -> str:
        """``sqlite:///RUN/study.db`` (absolute, so the URL works from any working directory)."""
        return f"sqlite:///{self.study_db.resolve().as_posix()}"

    def storage_url(self, configured: str | None) -> str:
        """The configured storage URL, else the folder's SQLite file."""
        return configured or self.default_storage_url()

    @staticmethod
    def absolute_url(url: str | None) -> str | None:
        """``url`` with a relative SQLite path made absolute (``sqlite:///study.db`` -> ``sqlite:////cwd/study.db``):
        what a manifest stores, so that commands run from another working directory find the same database."""
        prefix = "sqlite:///"
        if not url or not url.startswith(prefix) or url.startswith(prefix + "/") or url == prefix + ":memory:":
            return url
        path, sep, query = url[len(prefix):].partition("?")
        return prefix + Path(path).expanduser().resolve().as_posix() + sep + query

    def write_manifest(self, manifest: RunManifest) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest.with_name(f".{self.manifest.name}.tmp")
        tmp.write_text(json.dumps(asdict(manifest), indent=1), encoding="utf-8")
        tmp.replace(self.manifest)

    def read_manifest(self) -> RunManifest | None:
        """The manifest, or (for a folder holding only ``study.db``) one for its SQLite file; None otherwise."""
        if self.manifest.is_file():
            data = load_json(self.manifest, "")
            if not isinstance(data, dict) or not isinstance(data.get("storage") or "", str):
                raise UserError(f"{self.manifest}: a run manifest holds {{\"storage\": URL, \"study_name\": "
                                "NAME}: restore it, or pass the storage URL instead of the folder")
            return RunManifest(storage=data.get("storage") or self.default_storage_url(),
                               study_name=data.get("study_name"))
        if self.study_db.is_file():
            return RunManifest(storage=self.default_storage_url(), study_name=None)
        return None

    def best_record(self) -> TrialRecord:
        """The exported winner (``best.yaml`` + ``best.json``)."""
        return TrialRecord.load_export(self.best_yaml)
