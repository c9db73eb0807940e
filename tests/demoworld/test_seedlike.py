"""The seedlike world: the seed merge's heterogeneous sources at demo size (tokenizers, templates, file formats),
plain-text tasks, and experts that still master their skills."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from transformers import AutoTokenizer

from demoworld import text as T
from demoworld.build import build_world, load_manifest
from demoworld.demo import BUILDER_VERSION
from demoworld.layout import PLAIN_PROMPT, SKILLS, task_yaml
from demoworld.seedlike import ZEPHYR_TEMPLATE, chatml_to_zephyr, plain_doc
from demoworld.text import conversation
from objectives.errors import UserError

BIN = Path(sys.executable).parent
MSGS = [{"role": "system", "content": "Sei kurz."}, {"role": "user", "content": "Hallo?"},
        {"role": "assistant", "content": "Ja."}, {"role": "user", "content": "Und?"},
        {"role": "assistant", "content": "Nein."}]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "merge-search"), *args], capture_output=True, text=True, timeout=600)


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _generation_eos(folder: Path) -> list[int]:
    eos = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    return eos if isinstance(eos, list) else [eos]


def test_manifest_kind_and_models(seedlike_world):
    w = seedlike_world
    m = json.loads((w.root / "world.json").read_text())
    assert m["kind"] == "seedlike" == w.kind
    assert set(m["models"]) == {"base", *SKILLS} and w.models == m["models"]
    assert set(w.experts) == set(SKILLS) and w.tasks["test"]["zahlen"] and w.tasks["search"]["verben"]
    assert w.models["verben"]["sharded"] and w.models["verben"]["dtype"] == "bfloat16"
    assert w.models["zahlen"]["added_tokens"] == {"<|im_start|>": 94, "<|im_end|>": 95}
    assert [w.models[s]["chat_template"] for s in ("base", *SKILLS)] == [None, "chatml", "zephyr", None]
    # the same items, preference pairs and questions as a demo world of the same seed
    assert len(w.mtbench_questions.read_text().splitlines()) == 80
    assert w.preferences["train"].is_file() and w.preferences["test"].is_file()


def test_base_is_a_plain_mistral_base(seedlike_world):
    base = seedlike_world.base
    tok = AutoTokenizer.from_pretrained(base)
    assert not tok.chat_template and "<|im_start|>" not in tok.get_vocab()
    assert tok.eos_token == "</s>" and _generation_eos(base) == [tok.convert_tokens_to_ids("</s>")]
    assert len(tok("<|im_start|>")["input_ids"]) == len("<|im_start|>")  # spelled in characters
    text = "Größe: äöüß <|x|> a_b"
    assert tok.decode(tok(text)["input_ids"]) == text and tok.unk_token_id not in tok(text)["input_ids"]
    assert sorted(p.name for p in base.glob("*.safetensors")) == ["model.safetensors"]
    assert _config(base)["vocab_size"] == len(tok) and _config(base)["dtype"] == "float32"
    assert AutoTokenizer.from_pretrained(seedlike_world.tokenizer).get_vocab() == tok.get_vocab()


def test_zahlen_has_added_chatml_tokens_and_padded_vocab(seedlike_world):
    folder = seedlike_world.experts["zahlen"]
    tok = AutoTokenizer.from_pretrained(folder)
    base_vocab = AutoTokenizer.from_pretrained(seedlike_world.base).get_vocab()
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert (start, end) == (len(base_vocab), len(base_vocab) + 1)  # new ids after the base vocabulary
    assert {t: i for t, i in tok.get_vocab().items() if t in base_vocab} == base_vocab
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens)
    vocab_size = _config(folder)["vocab_size"]
    assert vocab_size % 8 == 0 and vocab_size > len(tok)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape()[0] == vocab_size
        assert f.get_slice("lm_head.weight").get_shape()[0] == vocab_size
    assert tok.eos_token == "<|im_end|>" and end in _generation_eos(folder)
    chat = tok.apply_chat_template(MSGS[1:2], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHallo?<|im_end|>\n<|im_start|>assistant\n"
    assert tok("<|im_start|>")["input_ids"] == [start]


def test_artikel_has_the_zephyr_template(seedlike_world):
    folder = seedlike_world.experts["artikel"]
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == ZEPHYR_TEMPLATE and tok.eos_token == "</s>"
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(seedlike_world.base).get_vocab()
    prompt = tok.apply_chat_template(MSGS[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nHallo?</s>\n<|assistant|>\n"
    full = tok.apply_chat_template(MSGS, tokenize=False)
    assert full == "<|system|>\nSei kurz.</s>\n<|user|>\nHallo?</s>\n<|assistant|>\nJa.</s>\n<|user|>\nUnd?</s>\n" \
                   "<|assistant|>\nNein.</s>\n"
    # the training conversations are rendered exactly as the template does
    assert chatml_to_zephyr(conversation([("Hallo?", "Ja."), ("Und?", "Nein.")], "Sei kurz.")) == full
    assert _config(folder)["vocab_size"] == len(tok)


def test_verben_is_sharded_bfloat16(seedlike_world):
    folder = seedlike_world.experts["verben"]
    assert not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and shards == sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    for shard in shards:
        with safe_open(str(folder / shard), "pt") as f:
            assert all(str(f.get_tensor(k).dtype) == "torch.bfloat16" for k in f.keys())
    assert _config(folder)["dtype"] == "bfloat16"
    tok = AutoTokenizer.from_pretrained(folder)
    assert not tok.chat_template and tok.eos_token == "</s>"
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(seedlike_world.base).get_vocab()


def test_tasks_are_plain_text(seedlike_world):
    w = seedlike_world
    for split in ("search", "test"):
        for skill in SKILLS:
            task = yaml.safe_load((w.include_path / f"{w.tasks[split][skill]}.yaml").read_text())
            assert task["doc_to_text"] == "Frage: {{text}}\nAntwort:" and task["target_delimiter"] == " "
            assert task["doc_to_choice"] == "choices" and task["doc_to_target"] == "gold"
            assert Path(task["dataset_kwargs"]["data_files"]["test"]).is_file()


def test_task_yaml_kinds(tmp_path):
    demo = task_yaml("t", tmp_path / "d.jsonl")
    assert demo == task_yaml("t", tmp_path / "d.jsonl", "demo") and "<|im_start|>" in demo["doc_to_text"]
    plain = task_yaml("t", tmp_path / "d.jsonl", "seedlike")
    assert {k for k in demo if demo[k] != plain[k]} == {"doc_to_text", "target_delimiter"}
    item = T.skill_items(0)["artikel"]["train"][0]  # training text = the task's prompt + delimiter + option
    assert plain_doc(item, item.choices[1]) == PLAIN_PROMPT.replace("{{text}}", item.text) + " " + item.choices[1]


def test_report_experts_beat_base(seedlike_world):
    res = run_cli("demo-world", "report", str(seedlike_world.root), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    chance, acc = report["chance"], report["accuracy"]
    assert set(acc) == {"base", *SKILLS}
    for skill in SKILLS:
        own = acc[skill][skill]
        assert own >= acc["base"][skill] + 0.2, (skill, own, acc["base"][skill])
        assert own >= chance[skill] + 0.3, (skill, own, chance[skill])


def test_rebuild_is_quick_noop(seedlike_world):
    stamp = (seedlike_world.root / "world.json").stat().st_mtime
    t0 = time.time()
    again = build_world(seedlike_world.root, seed=seedlike_world.seed, quiet=True, kind="seedlike")
    assert time.time() - t0 < 5
    assert again == seedlike_world and (seedlike_world.root / "world.json").stat().st_mtime == stamp


def test_demo_kind_on_seedlike_world_is_one_clear_error(seedlike_world):
    res = run_cli("demo-world", "build", "--out", str(seedlike_world.root))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("merge-search: error: world folder"), res.stderr
    assert "seedlike world" in lines[0] and "not a demo world" in lines[0]


def _fake_demo_world(root: Path) -> None:
    """A manifest as demo worlds built before the seedlike kind write it (no kind key), without models."""
    (root / "tasks" / "data").mkdir(parents=True)
    m = {"builder_version": BUILDER_VERSION, "seed": 0, "base": "models/base",
         "experts": {s: f"models/{s}" for s in SKILLS}, "tokenizer": "tokenizer",
         "tasks": {"include_path": "tasks", **{sp: {s: f"demo_{s}_{sp}" for s in SKILLS} for sp in ("search", "test")}},
         "preferences": {"train": "preferences/train.jsonl", "test": "preferences/test.jsonl"},
         "mtbench_questions": "mtbench/question.jsonl"}
    (root / "world.json").write_text(json.dumps(m))


def test_old_demo_manifest_still_loads_as_demo(tmp_path):
    _fake_demo_world(tmp_path)
    w = load_manifest(tmp_path)
    assert w.kind == "demo" and w.models == {}
    task = yaml.safe_load((w.include_path / "demo_zahlen_test.yaml").read_text())
    assert task["doc_to_text"].startswith("<|im_start|>user")


def test_seedlike_kind_on_demo_world_is_refused(tmp_path):
    _fake_demo_world(tmp_path)
    with pytest.raises(UserError, match="holds a demo world .* not a seedlike world"):
        build_world(tmp_path, seed=0, quiet=True, kind="seedlike")
    with pytest.raises(UserError, match="unknown world kind"):
        build_world(tmp_path / "new", seed=0, quiet=True, kind="zephyr")
