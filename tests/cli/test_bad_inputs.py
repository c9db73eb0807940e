"""Bad input across every sub-command: one stderr line naming the field or file, exit 2, nothing stored changed.

Every case runs the real CLI in-process against one scene (a valid config on the demo world, a run folder
that config made, an exported trial). Before and after each case the sha256 of every file in the run folder,
the export and the world's models is taken: a refused command changes none of them. No case needs a Ray
worker or a model load: bad input is refused by the checks that run before anything starts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bad_scene import Scene, assert_refused, copy_model, make_scene, recipe  # tests/cli/bad_scene.py


@pytest.fixture(scope="module")
def scene(world, tmp_path_factory) -> Scene:
    return make_scene(world, tmp_path_factory.mktemp("bad"))


def _truncated(scene: Scene) -> Path:
    model = copy_model(scene, "truncated")
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return model


def _bin_only(scene: Scene) -> Path:
    model = copy_model(scene, "binonly")
    (model / "model.safetensors").unlink(missing_ok=True)
    (model / "pytorch_model.bin").write_bytes(b"not really")
    return model


def _damaged_run(scene: Scene) -> Path:
    run = scene.root / "damaged"
    if not run.exists():
        shutil.copytree(scene.run, run)
        (run / "study.db").write_bytes(b"this is not a database" * 10)
    return run


def _bad_manifest(scene: Scene) -> Path:
    run = scene.root / "badmanifest"
    run.mkdir(exist_ok=True)
    (run / "run.json").write_text("{not json")
    return run


def _jsonl(scene: Scene, name: str, text: str) -> Path:
    return scene.write(name, text)


def _dpo_config(scene: Scene, train: Path) -> Path:
    return scene.write(f"dpo-{train.stem}.yaml", {"dpo": {"data": {"train": str(train)}}})


# (id, argv from the scene, text the one stderr line must contain)
CASES = [
    # config files
    ("missing-config", lambda s: ["search", str(s.root / "nope.yaml")], "nope.yaml' does not exist"),
    ("not-utf8", lambda s: ["search", str(_latin1(s))], "not UTF-8"),
    ("invalid-yaml", lambda s: ["search", str(s.write("broken.yaml", "name: [x\n"))], "invalid YAML"),
    ("duplicate-key", lambda s: ["search", str(s.write("dup.yaml", "name: a\nseed: 1\nname: b\n"))],
     "key 'name' appears twice"),
    ("python-object", lambda s: ["search", str(s.write("obj.yaml", "!!python/object:os.system {}\n"))],
     "could not determine a constructor"),
    ("typo-section", lambda s: ["search", str(s.config_with("typo.yaml", serach={"n_trials": 3}))], "serach"),
    ("nan-weight", lambda s: ["search", str(s.config_with("nan.yaml", space__models__0__parameters={"weight": float("nan")}))],
     "finite number"),
    ("inf-range", lambda s: ["search", str(s.config_with(
        "inf.yaml", space__models__0__parameters={"density": {"low": 0.1, "high": float("inf")}}))], "finite number"),
    ("unknown-method", lambda s: ["search", str(s.config_with("method.yaml", space__merge_method="dare_tie"))],
     "did you mean 'dare_ties'"),
    ("param-typo", lambda s: ["search", str(s.config_with("desnity.yaml", space__models__0__parameters={"desnity": 0.5}))],
     "did you mean 'density'"),
    ("missing-model", lambda s: ["search", str(s.config_with("nomodel.yaml", space__models__0__model=str(s.root / "gone"))),
                                 "--out", str(s.root / "never")], "gone' does not exist"),
    ("truncated-model", lambda s: ["search", str(s.config_with("trunc.yaml", space__models__0__model=str(_truncated(s)))),
                                   "--out", str(s.root / "never")], "not a readable safetensors"),
    ("bin-only-model", lambda s: ["search", str(s.config_with("bin.yaml", space__models__0__model=str(_bin_only(s)))),
                                  "--out", str(s.root / "never")], "safetensors only"),
    ("unknown-task", lambda s: ["search", str(s.config_with("task.yaml", objective__tasks__0__name="demo_zahlen_serach")),
                                "--out", str(s.root / "never")], "demo_zahlen_serach"),
    ("subset-too-large", lambda s: ["search", str(s.config_with("subset.yaml", objective__tasks__0__subset=5000)),
                                    "--out", str(s.root / "never")], "subset"),
    ("storage-not-url", lambda s: ["search", str(s.config_with("st1.yaml", search__storage="study.db")),
                                   "--out", str(s.root / "never")], "is not a URL"),
    ("storage-missing-folder", lambda s: ["search", str(s.config_with(
        "st2.yaml", search__storage=f"sqlite:///{s.root}/no/such/dir/x.db")), "--out", str(s.root / "never")],
     "does not exist"),
    ("storage-no-driver", lambda s: ["search", str(s.config_with(
        "st3.yaml", search__storage="postgresql://u@127.0.0.1:1/db")), "--out", str(s.root / "never")],
     "search.storage"),
    ("damaged-study-db", lambda s: ["search", str(s.config), "--out", str(_damaged_run(s))],
     "not a readable SQLite database"),
    ("no-ray-head", lambda s: ["search", str(s.config), "--out", str(s.root / "never"), "--address", "127.0.0.1:1"],
     "no Ray head answers"),
    ("bad-ray-address", lambda s: ["search", str(s.config), "--out", str(s.root / "never"), "--address", "nohost"],
     "expected HOST:PORT"),
    ("zero-trials", lambda s: ["search", str(s.config), "--out", str(s.root / "never"), "--n-trials", "0"],
     "--n-trials must be >= 1"),
    ("out-in-source", lambda s: ["search", str(s.config), "--out", str(s.world.experts["zahlen"] / "run")],
     "outputs never overwrite inputs"),
    ("out-under-a-file", lambda s: ["search", str(s.config), "--out", str(s.config / "run")], "is not a folder"),
    ("other-config-search", lambda s: ["search", str(s.config_with("other.yaml", seed=7)), "--out", str(s.run)],
     "different config"),
    ("other-config-run-from", lambda s: ["run", str(s.config_with("other2.yaml", space__parameters={"int8_mask": False})),
                                         "--out", str(s.run), "--from", "search"], "space.parameters.int8_mask"),
    ("missing-judge-prompts", lambda s: ["run", str(s.config_with("prompts.yaml", mtbench__judge__prompts=str(
        s.root / "judge_prompts_de.json"))), "--out", str(s.root / "never")], "mtbench.judge.prompts: judge prompts file"),
    ("only-after-a-stale-stage", lambda s: ["run", str(s.config_with("dpochange.yaml", dpo__train__max_steps=3)),
                                            "--out", str(s.finished_through("dpo")), "--only", "mtbench"],
     "stage 'dpo' is stale (dpo.train.max_steps changed): re-run from stage 'dpo'"),
    ("cmaes-with-constraints", lambda s: ["search", str(s.config_with(
        "cma.yaml", search__sampler="cmaes", objective__constraints=[{"objective": "demo_zahlen_search", "min": 0.1}]))],
     "ignores objective.constraints"),
    ("run-only-before-search", lambda s: ["run", str(s.config), "--out", str(s.root / "fresh"), "--only", "export"],
     "needs ['search'"),
    # export
    ("export-fail-trial", lambda s: ["export", str(s.run), "--trial", "1", "--out", str(s.root / "e1.yaml")],
     "never merged"),
    ("export-not-yaml", lambda s: ["export", str(s.run), "--out", str(s.root / "e.txt")], "must end in .yaml"),
    ("export-into-source", lambda s: ["export", str(s.run), "--out", str(s.world.experts["zahlen"] / "x.yaml")],
     "inside the input"),
    ("export-over-foreign-file", lambda s: ["export", str(s.run), "--out", str(s.write("mine.yaml", "a: 1\n"))],
     "not an earlier export"),
    ("export-no-such-trial", lambda s: ["export", str(s.run), "--trial", "99", "--out", str(s.root / "e2.yaml")],
     "has trials 0..1"),
    ("export-bad-manifest", lambda s: ["export", str(_bad_manifest(s)), "--out", str(s.root / "e3.yaml")],
     "invalid JSON"),
    ("export-no-run", lambda s: ["export", str(s.root / "nothing"), "--out", str(s.root / "e4.yaml")],
     "neither a run folder"),
    ("export-wrong-study", lambda s: ["export", str(s.run), "--study", "nope", "--out", str(s.root / "e5.yaml")],
     "no study 'nope'"),
    ("export-damaged-db", lambda s: ["export", str(_damaged_run(s)), "--out", str(s.root / "e6.yaml")],
     "cannot be read"),
    # merge and hash
    ("merge-into-source", lambda s: ["merge", str(s.export), "--out", str(s.world.experts["artikel"])],
     "outputs never overwrite inputs"),
    ("merge-into-foreign-folder", lambda s: ["merge", str(s.export), "--out", str(s.root / "exported")], "not empty"),
    ("recipe-typo-param", lambda s: ["merge", str(s.write("r1.yaml", _recipe_with(s, "desnity"))), "--out",
                                     str(s.root / "m1")], "did you mean 'density'"),
    ("recipe-typo-key", lambda s: ["merge", str(s.write("r2.yaml", {**recipe(s.world), "merge_metod": "x"})), "--out",
                                   str(s.root / "m2")], "merge_metod: unknown key"),
    ("recipe-nan", lambda s: ["merge", str(s.write("r3.yaml", _recipe_with(s, "weight", float("nan")))), "--out",
                              str(s.root / "m3")], "not a finite number"),
    ("recipe-unknown-method", lambda s: ["merge", str(s.write("r4.yaml", {**recipe(s.world), "merge_method": "tiez"})),
                                         "--out", str(s.root / "m4")], "unknown merge method 'tiez'"),
    ("recipe-not-mapping", lambda s: ["merge", str(s.write("r5.yaml", "- a\n- b\n")), "--out", str(s.root / "m5")],
     "is a YAML mapping"),
    ("hash-truncated", lambda s: ["hash", str(_truncated(s))], "not a readable safetensors"),
    ("hash-empty", lambda s: ["hash", str(s.root)], "holds no *.safetensors"),
    # dashboard
    ("dashboard-bad-port", lambda s: ["dashboard", str(s.run), "--port", "99999"], "--port must be"),
    ("dashboard-bad-host", lambda s: ["dashboard", str(s.run), "--host", "no-such-host.invalid", "--port", "8093"],
     "cannot listen"),
    ("dashboard-damaged-db", lambda s: ["dashboard", str(_damaged_run(s))], "not a readable SQLite database"),
    # dpo
    ("dpo-truncated-model", lambda s: ["dpo", str(s.config), "--model", str(_truncated(s)), "--out", str(s.root / "d1")],
     "not a readable safetensors"),
    ("dpo-empty-data", lambda s: ["dpo", str(_dpo_config(s, _jsonl(s, "empty.jsonl", "\n"))), "--model",
                                  str(s.world.base), "--out", str(s.root / "d2")], "has no rows"),
    ("dpo-bad-line", lambda s: ["dpo", str(_dpo_config(s, _jsonl(s, "badline.jsonl", '{"prompt": "a"}\n{oops\n'))),
                                "--model", str(s.world.base), "--out", str(s.root / "d3")], "line 2"),
    ("dpo-out-in-source", lambda s: ["dpo", str(s.config), "--model", str(s.world.base), "--out",
                                     str(s.world.base / "dpo")], "inside the input"),
    ("dpo-out-foreign-folder", lambda s: ["dpo", str(s.config), "--model", str(s.world.base), "--out",
                                          str(s.world.experts["verben"])], "not an earlier output"),
    ("dpo-no-base", lambda s: ["dpo", str(s.config), "--out", str(s.root / "d4")], "no DPO base model"),
    # mtbench and evaluate
    ("mtbench-not-a-model", lambda s: ["mtbench", "run", "--config", str(s.config), "--model", str(s.root / "exported"),
                                       "--out", str(s.root / "mt1")], "no config.json"),
    ("mtbench-out-in-source", lambda s: ["mtbench", "run", "--config", str(s.config), "--model", str(s.world.base),
                                         "--out", str(s.world.base / "mt")], "inside the input"),
    ("mtbench-rescore-bad-json", lambda s: ["mtbench", "rescore", str(s.write("replies.json", "[{")), "--questions",
                                            str(s.data["mtbench"]["questions"])], "invalid JSON"),
    ("evaluate-top-k-without-run", lambda s: ["evaluate", str(s.config), "--top-k", "2"], "--top-k needs --run"),
    ("evaluate-missing-recipe", lambda s: ["evaluate", str(s.config), "--recipe", str(s.root / "none.yaml")],
     "do not exist"),
    ("evaluate-out-in-source", lambda s: ["evaluate", str(s.config), "--out", str(s.world.base / "eval")],
     "inside the input"),
    ("unknown-stage", lambda s: ["run", str(s.config), "--from", "merge"], "invalid choice"),
    # found by trying the CLI as a hostile user
    ("config-is-a-folder", lambda s: ["search", str(s.root)], "is not a file"),
    ("huge-seed", lambda s: ["search", str(s.config_with("seed.yaml", seed=2**70)), "--out", str(s.root / "never")],
     "seed"),
    ("min-resource-zero", lambda s: ["search", str(s.config_with("minres.yaml", search__min_resource=0)), "--out",
                                     str(s.root / "never")], "min_resource"),
    ("cuda-without-gpu", lambda s: ["search", str(s.config_with("cuda.yaml", device="cuda")), "--out",
                                    str(s.root / "never")], "no CUDA device"),
    ("gpus-not-here", lambda s: ["search", str(s.config_with("gpus.yaml", search__worker_gpus=4)), "--out",
                                 str(s.root / "never")], "worker_gpus"),
    ("missing-tokenizer-source", lambda s: ["search", str(s.config_with(
        "tok.yaml", space__tokenizer_source=str(s.root / "no-tok"))), "--out", str(s.root / "never")],
     "tokenizer_source"),
    ("out-on-proc", lambda s: ["search", str(s.config), "--out", "/proc/merge-search-run"], "not writable"),
    ("run-missing-dpo-data", lambda s: ["run", str(s.config_with("nodata.yaml", dpo__data__train=str(s.root / "x.jsonl"))),
                                        "--out", str(s.root / "never")], "dpo.data.train"),
    ("shared-study-other-config", lambda s: ["search", str(s.config_with(
        "shared.yaml", search__storage=f"sqlite:///{s.run / 'study.db'}", space__parameters={"int8_mask": False})),
        "--out", str(s.root / "never")], "made by a different config"),
    ("merge-negative-seed", lambda s: ["merge", str(s.export), "--out", str(s.root / "m6"), "--seed", "-1"],
     "a seed is a whole number"),
    ("merge-zero-threads", lambda s: ["merge", str(s.export), "--out", str(s.root / "m7"), "--threads", "0"],
     "expected a whole number >= 1"),
    ("merge-unknown-device", lambda s: ["merge", str(s.export), "--out", str(s.root / "m8"), "--device", "tpu"],
     "a device is cpu, cuda or cuda:N"),
    ("dpo-hash-without-recipe", lambda s: ["dpo", str(s.config), "--model", str(s.world.base), "--weights-sha256",
                                           "0" * 64, "--out", str(s.root / "d5")], "pass --recipe"),
    ("dpo-bad-hash", lambda s: ["dpo", str(s.config), "--recipe", str(s.export), "--weights-sha256", "zzz", "--out",
                                str(s.root / "d6")], "64 lowercase hex"),
    ("evaluate-foreign-folder", lambda s: ["evaluate", str(s.config), "--out", str(s.export.parent)], "not empty"),
    ("rescore-over-its-input", lambda s: ["mtbench", "rescore", str(s.write("r.json", "[]")), "--questions",
                                          str(s.data["mtbench"]["questions"]), "--out", str(s.root / "r.json")],
     "inside the input"),
    ("mtbench-out-holds-its-questions", lambda s: ["mtbench", "run", "--model", str(s.world.base), "--questions",
                                                   str(_questions_as_answers(s)), "--out", str(s.root / "qdir")],
     "would overwrite the input"),
]


def _latin1(scene: Scene) -> Path:
    path = scene.root / "latin1.yaml"
    path.write_bytes("name: Übung\n".encode("latin-1"))
    return path


def _questions_as_answers(scene: Scene) -> Path:
    folder = scene.root / "qdir"
    folder.mkdir(exist_ok=True)
    path = folder / "answers.jsonl"
    shutil.copyfile(scene.data["mtbench"]["questions"], path)
    return path


def _recipe_with(scene: Scene, key: str, value=0.5) -> dict:
    data = recipe(scene.world)
    data["models"][1]["parameters"][key] = value
    return data


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(scene, case, capsys, monkeypatch):
    name, argv, expected = case
    monkeypatch.chdir(scene.root)
    assert_refused(scene, argv(scene), expected, capsys)


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
