"""Preference data: layouts, bad rows with row numbers, clear errors; config errors of the DPO stage."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from objectives.errors import UserError
from objectives.schema import validate
from search.stages import prefdata
from search.stages.dpo import load_data, resolve_runtime
from search.dpo_config import DPOStageConfig
from search.stages.dpo import load_dpo_config


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


ORCA = [
    {"system": "Du bist hilfreich.", "question": "Wie spät ist es?", "chosen": "Gern! Es ist acht.", "rejected": "No."},
    {"system": "", "question": "Wo ist der Hund?", "chosen": "Gern! Im Garten.", "rejected": "Im Haus."},
    {"system": "", "question": "Wer?", "chosen": "", "rejected": "Ich."},                     # empty chosen
    {"system": "", "question": "Was?", "chosen": "Das.", "rejected": "Das."},                 # chosen == rejected
    {"system": "", "question": "Wann?", "rejected": "Nie."},                                  # missing chosen
]


@pytest.fixture(scope="module")
def tokenizer(world):
    tok = AutoTokenizer.from_pretrained(str(world.base))
    tok.chat_template = prefdata.CHATML_TEMPLATE
    return tok


def test_orca_layout_normalised_and_bad_rows_numbered(tmp_path):
    rows = prefdata.load_rows(str(_jsonl(tmp_path / "p.jsonl", ORCA)))
    pairs, numbers, bad = prefdata.normalise(rows, "p.jsonl")
    assert numbers == [1, 2]
    assert pairs[0]["prompt"] == [{"role": "system", "content": "Du bist hilfreich."},
                                  {"role": "user", "content": "Wie spät ist es?"}]
    assert pairs[1]["prompt"] == [{"role": "user", "content": "Wo ist der Hund?"}]  # empty system: no message
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "Gern! Es ist acht."}]
    assert bad.count == 3 and bad.total == 5
    assert bad.reasons == {"missing or empty chosen": [3, 5], "chosen == rejected": [4]}
    assert "3 of 5 rows bad" in bad.summary() and "rows 3, 5" in bad.summary()


def test_trl_layouts_strings_and_conversational_parquet(tmp_path):
    import pandas as pd

    conv = [{"prompt": [{"role": "user", "content": "Hallo?"}],
             "chosen": [{"role": "assistant", "content": "Gern! Hallo."}],
             "rejected": [{"role": "assistant", "content": "Hi."}]}]
    pd.DataFrame(conv).to_parquet(tmp_path / "c.parquet")
    pairs, _, bad = prefdata.normalise(prefdata.load_rows(str(tmp_path / "c.parquet")), "c")
    assert bad.count == 0 and pairs == conv
    strings = [{"prompt": "Hallo?", "chosen": "Gern! Hallo.", "rejected": "Hi."}]
    (tmp_path / "s.json").write_text(json.dumps(strings), encoding="utf-8")
    pairs, _, _ = prefdata.normalise(prefdata.load_rows(str(tmp_path / "s.json")), "s")
    assert pairs == conv  # a string prompt becomes a user message, string answers assistant messages


def test_missing_file_unknown_layout_and_bad_type_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prefdata.load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="unsupported file type"):
        prefdata.load_rows(str(_jsonl(tmp_path / "p.csv", ORCA)))
    rows = prefdata.load_rows(str(_jsonl(tmp_path / "q.jsonl", [{"input": "a", "output": "b"}])))
    with pytest.raises(UserError, match=r"unknown column layout \['input', 'output'\]"):
        prefdata.normalise(rows, "q.jsonl")


def test_overlength_rows_skipped_or_fatal(tmp_path, tokenizer):
    long = dict(ORCA[0], chosen="Gern! " + "sehr " * 100)
    path = _jsonl(tmp_path / "p.jsonl", [ORCA[0], long, ORCA[1], ORCA[0], ORCA[1]])
    base = {"data": {"train": str(path), "heldout_fraction": 0.25}, "train": {"max_length": 120}}
    data = load_data(validate(DPOStageConfig, base, "t"), tokenizer)
    assert data.report["train"]["bad_rows"] == {"longer than max_length=120 tokens": [2]}
    assert data.report["n_train"] + data.report["n_heldout"] == 4 and data.report["n_heldout"] == 1
    fail = validate(DPOStageConfig, {**base, "data": {**base["data"], "bad_rows": "fail"}}, "t")
    with pytest.raises(UserError, match=r"1 of 5 rows bad: longer than max_length=120 tokens \(1: row 2\)"):
        load_data(fail, tokenizer)


def test_config_errors(tmp_path):
    with pytest.raises(UserError, match="dpo.data.train is not set"):
        load_data(DPOStageConfig(), tokenizer=None)
    cfg = validate(DPOStageConfig, {"device": "cpu", "quant": {"mode": "4bit"}}, "t")
    with pytest.raises(UserError, match="needs CUDA"):
        resolve_runtime(cfg)
    bad = tmp_path / "c.yaml"
    bad.write_text("dpo:\n  lora: {r: 0, targets: [q_proj]}\n  train: {learning_rate: -1}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"3 config error\(s\).*lora.r.*lora.targets: unknown field.*learning_rate"):
        load_dpo_config(bad)


def test_cpu_defaults_are_seed_settings_without_4bit():
    cfg = DPOStageConfig()
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_accum,
            cfg.train.beta, cfg.lora.target_modules, cfg.quant.quant_type) == \
        (5e-6, 3.0, 8, 4, 0.1, ("q_proj", "v_proj"), "nf4")
    rt = resolve_runtime(validate(DPOStageConfig, {"device": "cpu"}, "t"))
    assert (rt.device, rt.quantized, rt.precision) == ("cpu", False, "fp32")


def test_cli_errors_exit_2(tmp_path, world, capsys, monkeypatch):
    from pathlib import Path

    from search.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # run-config paths are relative to the repo root

    import yaml

    no_dpo = yaml.safe_load(Path("configs/demo.yaml").read_text(encoding="utf-8"))
    no_dpo.pop("dpo")
    run_cfg = tmp_path / "no-dpo.yaml"
    run_cfg.write_text(yaml.safe_dump(no_dpo), encoding="utf-8")
    assert main(["dpo", str(run_cfg), "--model", str(world.base), "--out", str(tmp_path / "a")]) == 2
    assert "dpo.data.train is not set" in capsys.readouterr().err  # a run config without a dpo section
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"dpo:\n  data: {{train: {world.preferences['train']}}}\n", encoding="utf-8")
    assert main(["dpo", str(cfg), "--out", str(tmp_path / "b")]) == 2
    assert "no DPO base model" in capsys.readouterr().err
    # --recipe re-merges (hash-checked) before training; a wrong expected hash stops the stage
    assert main(["dpo", str(cfg), "--recipe", "configs/recipes/demo-hand.yaml", "--weights-sha256", "0" * 64,
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "re-merged (seed 0, cpu) to weights_sha256" in err and "0" * 64 in err
    assert (tmp_path / ".c.staging" / "base" / "merge.json").is_file()  # kept for a look, beside the output
    assert not (tmp_path / "c").exists()  # a failed stage swaps nothing in


def _hub_cache_dataset(cache, repo_id: str, files: dict[str, list[dict]]) -> None:
    """A dataset repo as `huggingface-cli download --repo-type dataset` leaves it in the hub cache."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"datasets--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, rows in files.items():
        path = root / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _jsonl(path, rows)


def test_a_hub_dataset_in_the_local_cache_is_read_offline_and_checked_before_the_run(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from search.stages.dpo import data_problems

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a node without the hub
    _hub_cache_dataset(cache, "owner/prefs-de", {"data/train.jsonl": ORCA, "data/test.jsonl": ORCA[:2]})
    _hub_cache_dataset(cache, "owner/other", {"data/train.jsonl": [{"frage": "Wer?", "antwort": "Ich."}]})
    assert prefdata.in_hub_cache("owner/prefs-de") and not prefdata.in_hub_cache("owner/absent")
    assert len(prefdata.load_rows("owner/prefs-de", split="train")) == 5
    assert len(prefdata.load_rows("owner/prefs-de", split="test")) == 2

    def cfg(train: str) -> DPOStageConfig:
        return validate(DPOStageConfig, {"data": {"train": train, "heldout": "owner/prefs-de"}}, "dpo")

    assert data_problems(cfg("owner/prefs-de")) == []
    said = capsys.readouterr().err
    assert "'owner/prefs-de' (local hub cache, split 'train'): 5 rows, 2 usable pairs (3 bad)" in said
    assert "(local hub cache, split 'test'): 2 rows, 2 usable pairs" in said
    [problem] = data_problems(cfg("owner/other"))
    assert "owner/other" in problem and "layout" in problem  # columns checked before the run, from the cache
    data_problems(cfg("owner/absent"))
    assert "'owner/absent' is a hub dataset not in the local cache: not checked offline" in capsys.readouterr().err
