"""The scene every bad-input case runs against (``test_bad_inputs.py``, ``test_bad_sources.py``): a valid
config on the demo world, a run folder that config made, an exported trial; and the check that a refused
command printed one line, exited 2 and changed nothing stored."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from search.cli import main
from search.config import load_run_config, save_run_config
from search.stages.optimize import study_fingerprint
from search.rundir import RunDir, RunManifest, TrialAttr

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Scene:
    root: Path
    world: object
    config: Path  # a valid run config
    run: Path  # a run folder made by ``config``: resolved.yaml, run.json, study.db (COMPLETE + FAIL trial)
    export: Path  # an exported trial (best.yaml + best.json)
    data: dict

    def write(self, name: str, data: dict | str) -> Path:
        path = self.root / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
        return path

    def config_with(self, name: str, **changes) -> Path:
        data = json.loads(json.dumps(self.data))
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            node = data
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node[p]
            if value is DROP:
                node.pop(last)
            else:
                node[last] = value
        return self.write(name, data)

    def finished_through(self, last: str) -> Path:
        """A copy of :attr:`run` whose stages up to ``last`` carry completion markers (with lineage) made by
        :attr:`config`, as if ``merge-search run`` had finished them (made once per scene)."""
        from search.lineage import marker_record
        from search.pipeline import STAGES

        folder = self.root / f"done-{last}"
        if not folder.exists():
            shutil.copytree(self.run, folder)
            cfg, run = load_run_config(self.config), RunDir(folder)
            run.marker(last).parent.mkdir(parents=True)
            names = [s.NAME for s in STAGES]
            for i, stage in enumerate(STAGES[: names.index(last) + 1]):
                run.marker(stage.NAME).write_text(json.dumps(marker_record(cfg, run, stage, STAGES[:i], 1.0)))
        return folder


DROP = object()


def config_data(world) -> dict:
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    root = Path(world.root)
    data["space"]["base_model"] = str(world.base)
    data["space"]["models"] = [{"model": str(p), "name": n} for n, p in world.experts.items()]
    data["objective"]["include_paths"] = [str(root / "tasks")]
    for t in data["objective"]["tasks"]:
        t["subset"] = 20
    data["objective"]["rungs"] = ["all"]
    data["objective"].pop("chat")  # the chat objective's own checks: tests/objectives/test_chat_objective.py
    data["dpo"]["data"] = {"train": str(world.preferences["train"]), "heldout": str(world.preferences["test"])}
    data["mtbench"]["questions"] = str(root / "mtbench" / "question.jsonl")
    return data


def recipe(world) -> dict:
    return {"merge_method": "dare_ties", "base_model": str(world.base), "dtype": "float32",
            "models": [{"model": str(world.base)}] + [{"model": str(p), "parameters": {"density": 0.6, "weight": 0.3}}
                                                       for p in world.experts.values()]}


def make_scene(world, root: Path) -> Scene:
    """A valid config on ``world``, a run folder it made (a COMPLETE and a FAIL trial) and an exported trial."""
    data = config_data(world)
    config = root / "good.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    cfg = load_run_config(config)
    run = RunDir(root / "run")
    save_run_config(cfg, run.resolved_config)
    study = optuna.create_study(storage=run.default_storage_url(), study_name=cfg.name, direction="maximize")
    study.set_user_attr(TrialAttr.STUDY_CONFIG, study_fingerprint(cfg))  # as the search stage records it
    run.write_manifest(RunManifest(storage=None, study_name=cfg.name))
    text = yaml.safe_dump(recipe(world))
    attrs = {"recipe": text, "seed": 1, "weights_sha256": "0" * 64, "merge_device": "cpu", "merge_threads": 1}
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"recipe": text, "seed": 2}))
    export = root / "exported" / "best.yaml"
    assert main(["export", str(run.root), "--out", str(export)]) == 0
    return Scene(root, world, config, run.root, export, data)


def digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for top in paths:
        for p in sorted(Path(top).rglob("*")) if Path(top).is_dir() else [Path(top)]:
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def copy_model(scene: Scene, name: str) -> Path:
    dst = scene.root / name
    if not dst.exists():
        shutil.copytree(scene.world.experts["zahlen"], dst)
    return dst


def assert_refused(scene: Scene, argv: list[str], expected: str, capsys) -> None:
    """``argv`` exits 2 with one stderr line containing ``expected``, no traceback, and changes no file of the
    run folder, the export or the world's models; nothing is created at ``scene.root / "never"``."""
    guarded = [scene.run, scene.export.parent, scene.world.base, *scene.world.experts.values()]
    before = digest(guarded)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and expected in lines[0], lines[0]
    assert digest(guarded) == before
    assert not (scene.root / "never").exists()  # nothing was created for a refused command
