"""The offline demo world: layout, tokenizer, models, lm-eval tasks and the skill gaps it must show."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralForCausalLM

from demoworld import text as T
from demoworld.build import build_world, load_manifest
from demoworld.layout import SKILLS
from demoworld.report import world_report

BIN = Path(sys.executable).parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "merge-search"), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def report(world):
    return world_report(world, "test")


def test_manifest_layout(world):
    m = json.loads((world.root / "world.json").read_text())
    assert set(m) >= {"base", "experts", "tokenizer", "tasks", "preferences", "mtbench_questions"}
    assert set(m["experts"]) == set(SKILLS)
    assert all(not Path(v).is_absolute() for v in [m["base"], m["tokenizer"], *m["experts"].values()])
    for folder in [world.base, *world.experts.values()]:
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        assert (folder / "tokenizer.json").is_file()
    for split in ("search", "test"):
        for skill in SKILLS:
            task = yaml.safe_load((world.include_path / f"{world.tasks[split][skill]}.yaml").read_text())
            assert task["dataset_path"] == "json"
            assert Path(task["dataset_kwargs"]["data_files"]["test"]).is_file()


def test_splits_are_disjoint_and_deterministic():
    a, b = T.skill_items(7), T.skill_items(7)
    assert a == b
    for skill in SKILLS:
        texts = {split: {it.text for it in a[skill][split]} for split in ("train", "search", "test")}
        assert not texts["search"] & texts["test"]
        assert not texts["train"] & (texts["search"] | texts["test"])
        assert len(texts["test"]) == 200
        golds = [it.gold for it in a[skill]["test"]]
        # balanced answers: no option index carries more than half the items
        assert max(golds.count(g) for g in set(golds)) < 0.5 * len(golds)
        # options that are prefixes of each other stay distinguishable thanks to the terminator
        assert all(c.endswith(".") for it in a[skill]["test"] for c in it.choices)
    assert T.skill_items(8) != a


def test_tokenizer_and_chat_template(world):
    tok = AutoTokenizer.from_pretrained(world.tokenizer)
    text = "Größe: äöüß ÄÖÜ 0-9!"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == len(text)
    assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "Hallo"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHallo<|im_end|>\n<|im_start|>assistant\n"
    special = tok("<|im_start|>")["input_ids"]
    assert len(special) == 1 and tok.eos_token == "<|im_end|>"


def test_models_load_and_generate(world):
    model = AutoModelForCausalLM.from_pretrained(world.experts["zahlen"])
    assert isinstance(model, MistralForCausalLM)
    assert 2e5 < sum(p.numel() for p in model.parameters()) < 1e6
    tok = AutoTokenizer.from_pretrained(world.experts["zahlen"])
    ids = tok.apply_chat_template([{"role": "user", "content": "Wo spielt das Kind?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=30, do_sample=False, eos_token_id=tok.eos_token_id)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(answer.strip()) > 3
    # experts differ from the base (they were fine-tuned) but keep its shapes
    base = AutoModelForCausalLM.from_pretrained(world.base)
    diffs = [(a - b).abs().max().item() for a, b in zip(base.parameters(), model.parameters())]
    assert max(diffs) > 0


def test_experts_beat_chance_and_other_models(report):
    chance, acc = report["chance"], report["accuracy"]
    assert set(acc) == {"base", *SKILLS}
    for skill in SKILLS:
        own = acc[skill][skill]
        assert own >= chance[skill] + 0.3, (skill, own, chance[skill])
        for other, scores in acc.items():
            if other != skill:
                assert own >= scores[skill] + 0.2, (skill, other, own, scores[skill])


def test_report_cli_json_matches(world, report):
    res = run_cli("demo-world", "report", str(world.root), "--json")
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed["chance"] == pytest.approx(report["chance"])
    assert printed["accuracy"]["verben"] == pytest.approx(report["accuracy"]["verben"])


def test_stock_lm_eval_cli_reproduces_report(world, report, tmp_path):
    task = world.tasks["test"]["artikel"]
    res = subprocess.run(
        [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
         f"pretrained={world.experts['artikel']}",
         "--include_path", str(world.include_path), "--tasks", task, "--batch_size", "32",
         "--output_path", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert results["results"][task]["acc,none"] == pytest.approx(report["accuracy"]["artikel"]["artikel"])


def test_rebuild_is_quick_noop(world):
    stamp = (world.root / "world.json").stat().st_mtime
    t0 = time.time()
    again = build_world(world.root, seed=world.seed, quiet=True)
    assert time.time() - t0 < 5
    assert again == world and (world.root / "world.json").stat().st_mtime == stamp


def test_moved_world_rewrites_task_paths(world, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(world.root, moved)
    w = load_manifest(moved)
    task = yaml.safe_load((w.include_path / f"{w.tasks['test']['zahlen']}.yaml").read_text())
    assert Path(task["dataset_kwargs"]["data_files"]["test"]).parent == (moved / "tasks" / "data").resolve()


@pytest.mark.parametrize("target", ["file", "nonempty", "other-seed"])
def test_bad_out_is_one_clear_error(world, tmp_path, target):
    if target == "file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "world"
    elif target == "nonempty":
        out = tmp_path / "mine"
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    else:
        out = world.root
    args = ["demo-world", "build", "--out", str(out)] + (["--seed", "3"] if target == "other-seed" else [])
    res = run_cli(*args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("merge-search: error: world folder"), res.stderr
    if target == "nonempty":
        assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_unwritable_out_is_one_clear_error(tmp_path):
    res = run_cli("demo-world", "build", "--out", "/proc/merge-search-world")
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and "not writable" in res.stderr


def test_report_on_non_world_is_one_clear_error(tmp_path):
    res = run_cli("demo-world", "report", str(tmp_path))
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and "is not a demo world" in res.stderr


def test_data_files_for_later_stages(world):
    for split in ("train", "test"):
        rows = [json.loads(line) for line in world.preferences[split].read_text().splitlines()]
        assert rows and all(set(r) == {"system", "question", "chosen", "rejected"} for r in rows)
        assert all(r["chosen"] != r["rejected"] for r in rows)
    qs = [json.loads(line) for line in world.mtbench_questions.read_text().splitlines()]
    assert {q["category"] for q in qs} == {*SKILLS, "alltag"}
    assert all(len(q["turns"]) == 2 and len(q["reference"]) == 2 for q in qs)
    assert torch.__version__  # torch importable alongside (sanity for the stage tests)


def test_two_builds_of_one_folder_take_turns(tmp_path):
    """A second build of a folder waits for the first (two test workers, two terminals), then finds its world."""
    from demoworld.build import build_lock

    out = tmp_path / "world"
    probe = ("import sys, time; from pathlib import Path; from demoworld.build import build_lock\n"
             "with build_lock(Path(sys.argv[1]), quiet=False):\n    print('got it', time.time(), flush=True)")
    with build_lock(out, quiet=True):
        second = subprocess.Popen([sys.executable, "-c", probe, str(out)], stdout=subprocess.PIPE, text=True,
                                  cwd=Path(__file__).resolve().parents[2])
        first_line = second.stdout.readline()
        time.sleep(1.0)
        assert second.poll() is None  # still waiting while the first build holds the lock
        released = time.time()
    rest = second.communicate(timeout=60)[0]
    assert first_line.startswith(f"waiting for another build of {out}")
    assert rest.startswith("got it") and float(rest.split()[-1]) >= released
