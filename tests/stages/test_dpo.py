"""End to end on the demo world: DPO raises held-out preference accuracy, LoRA weights change, the merged
model loads and chats. One run of ``merge-search dpo`` (a few steps at a demo learning rate) shared by all."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from objectives.preference import preference_scores
from search.cli import main


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    cfg = {"dpo": {
        "data": {"train": str(world.preferences["train"]), "heldout": str(world.preferences["test"]),
                 "train_eval_rows": 32},
        "train": {"learning_rate": 5e-3, "max_steps": 12, "batch_size": 8, "grad_accum": 1, "max_length": 256,
                  "gradient_checkpointing": False, "logging_steps": 1, "eval_batch_size": 32},
    }}
    (tmp / "dpo.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp / "out"
    assert main(["dpo", str(tmp / "dpo.yaml"), "--model", str(world.base), "--out", str(out)]) == 0
    return out


def test_heldout_preference_accuracy_improves(run, capsys):
    m = json.loads((run / "metrics.json").read_text())
    assert set(m) == {"heldout_before", "heldout_after", "train"}
    for key in ("heldout_before", "heldout_after"):
        assert set(m[key]) == {"pref_accuracy", "reward_margin", "n"} and m[key]["n"] == 100
    before, after = m["heldout_before"], m["heldout_after"]
    print(f"held-out pref accuracy {before['pref_accuracy']} -> {after['pref_accuracy']}, "
          f"margin {before['reward_margin']:.1f} -> {after['reward_margin']:.1f}")
    assert after["pref_accuracy"] > before["pref_accuracy"]
    assert after["reward_margin"] > before["reward_margin"]
    assert m["train"]["steps"] == 12 and m["train"]["reward_accuracy"] > 0.5
    assert (run / "loss.png").stat().st_size > 1000
    assert yaml.safe_load((run / "config.yaml").read_text())["runtime"] == \
        {"device": "cpu", "quantized": False, "precision": "fp32"}


def test_lora_weights_change(run, world):
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)  # lora_B starts at zero: only gradients move it
    # the demo tokenizer's ChatML tokens belong to its own vocabulary (trained from the start): no extra rows
    assert cfg["trainable_token_indices"] is None
    base = load_file(world.base / "model.safetensors")
    merged = load_file(run / "model" / "model.safetensors")
    for name in base:
        changed = not torch.equal(base[name], merged[name])
        assert changed == (".q_proj." in name or ".v_proj." in name), name


def test_merged_model_loads_scores_as_trained_and_chats(run, world):
    tok = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    pairs = [{"prompt": [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]}],
              "chosen": [{"role": "assistant", "content": r["chosen"]}],
              "rejected": [{"role": "assistant", "content": r["rejected"]}]}
             for r in map(json.loads, world.preferences["test"].read_text(encoding="utf-8").splitlines())]
    after = json.loads((run / "metrics.json").read_text())["heldout_after"]
    merged = preference_scores(model, tok, pairs, batch_size=32)
    assert merged["pref_accuracy"] == after["pref_accuracy"]  # merge_and_unload kept what training learned
    assert merged["reward_margin"] == pytest.approx(after["reward_margin"], rel=1e-3)
    msgs = [{"role": "system", "content": "Du bist ein hilfreicher Assistent."},
            {"role": "user", "content": "Wo kocht der Hund, wenn es schnell ist?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(ids["input_ids"][0]).endswith("<|im_start|>assistant\n")  # ChatML saved with the model
    out = model.generate(**ids, max_new_tokens=40, do_sample=False, eos_token_id=tok.eos_token_id)
    reply = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(repr(reply))
    assert reply.strip()
