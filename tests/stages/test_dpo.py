"""End to end on the demo world: the demo's DPO settings (configs/dpo-demo.yaml, the regularised default loss)
on a merge of the world's experts widen the held-out preference margin and raise the chosen answers' likelihood
without lowering preference accuracy, warn of likelihood displacement exactly when it happened, keep the best
held-out checkpoint, change the LoRA weights, and the merged model loads and chats. One run of
``merge-search dpo --recipe`` shared by all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from objectives.preference import preference_scores
from search.cli import main
from search.stages.dpo import displacement_warning

REPO = Path(__file__).resolve().parents[2]


def hand_recipe(world) -> dict:
    """configs/recipes/demo-hand.yaml (the seed recipe's shape) on ``world``'s models."""
    return {"models": [{"model": str(world.base)}] + [
                {"model": str(world.experts[s]), "parameters": {"density": 0.6, "weight": w}}
                for s, w in (("zahlen", 0.3), ("artikel", 0.3), ("verben", 0.4))],
            "merge_method": "dare_ties", "base_model": str(world.base), "parameters": {"int8_mask": True},
            "dtype": "float32"}


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    demo = yaml.safe_load((REPO / "configs" / "dpo-demo.yaml").read_text(encoding="utf-8"))["dpo"]
    assert "loss_type" not in demo["train"]  # the demo trains with the default loss
    demo = {k: v for k, v in demo.items() if k not in ("model", "output_dir")}
    demo["data"] = {"train": str(world.preferences["train"]), "heldout": str(world.preferences["test"]),
                    "train_eval_rows": 32}
    (tmp / "dpo.yaml").write_text(yaml.safe_dump({"dpo": demo}), encoding="utf-8")
    (tmp / "hand.yaml").write_text(yaml.safe_dump(hand_recipe(world), sort_keys=False), encoding="utf-8")
    out = tmp / "out"
    assert main(["dpo", str(tmp / "dpo.yaml"), "--recipe", str(tmp / "hand.yaml"), "--seed", "0",
                 "--out", str(out)]) == 0
    return out


def test_heldout_margin_and_chosen_likelihood_rise_and_accuracy_does_not_fall(run, capsys):
    m = json.loads((run / "metrics.json").read_text())
    dpo = yaml.safe_load((run / "config.yaml").read_text())["dpo"]
    assert set(m) == {"heldout_before", "heldout_after", "train", "warnings"}
    scores = {"pref_accuracy", "reward_margin", "n", "chosen_logp", "chosen_logp_per_token", "rejected_logp"}
    assert set(m["heldout_before"]) == scores and set(m["heldout_after"]) == scores | {"chosen_less_likely"}
    assert m["heldout_before"]["n"] == m["heldout_after"]["n"] == 100
    before, after = m["heldout_before"], m["heldout_after"]
    print(f"held-out pref accuracy {before['pref_accuracy']} -> {after['pref_accuracy']}, "
          f"margin {before['reward_margin']:.1f} -> {after['reward_margin']:.1f}, chosen answers "
          f"{before['chosen_logp_per_token']:.3f} -> {after['chosen_logp_per_token']:.3f} nats/token, "
          f"{after['chosen_less_likely']:.0%} of them less likely")
    # 40 steps move held-out accuracy over 100 pairs by a few pairs, up or none (0.72 -> 0.75, 0.78 -> 0.78 and
    # 0.79 -> 0.79 on three worlds); what the regularised default ([sigmoid, sft]) reliably does is widen the
    # margin while raising the chosen answers' likelihood (plain DPO widens it by lowering both)
    assert after["pref_accuracy"] >= before["pref_accuracy"]
    assert after["reward_margin"] > before["reward_margin"]
    assert after["chosen_logp_per_token"] > before["chosen_logp_per_token"]
    # where more than dpo.displacement_share of them lost probability, it says so
    expected = displacement_warning(before, after, dpo["displacement_share"])
    assert m["warnings"] == ([expected] if expected else [])
    steps = m["train"]["steps"]
    assert steps == dpo["train"]["max_steps"]
    assert m["train"]["reward_accuracy"] > 0.5
    assert m["train"]["best_checkpoint"] == "loss" and 1 <= m["train"]["best_step"] <= steps
    every = int(dpo["train"]["eval_steps"])
    evals = [h["step"] for h in json.loads((run / "log_history.json").read_text()) if "eval_loss" in h]
    # the held-out evaluations the best checkpoint was picked from, then the implicit-reward one on train pairs
    assert evals == [*range(every, steps + 1, every), steps]
    assert not list((run / "trainer").glob("checkpoint-*"))  # the checkpoints are removed once one is kept
    assert (run / "loss.png").stat().st_size > 1000
    assert yaml.safe_load((run / "config.yaml").read_text())["runtime"] == \
        {"device": "cpu", "quantized": False, "precision": "fp32"}


def test_lora_weights_change(run):
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)  # lora_B starts at zero: only gradients move it
    # the demo tokenizer's ChatML tokens belong to its own vocabulary (trained from the start): no extra rows
    assert cfg["trainable_token_indices"] is None
    base = load_file(run / "base" / "model.safetensors")  # the re-merged recipe DPO started from
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
