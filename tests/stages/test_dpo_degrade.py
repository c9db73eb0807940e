"""On the demo world: DPO that degrades the model says so, and DPO that diverges fails its stage.

- plain DPO (the seed's ``loss_type: [sigmoid]``) over-trained at a high learning rate widens the preference
  margin by making the held-out chosen answers less likely: the "likelihood displacement" warning is logged and
  recorded in ``metrics.json`` (the regularised default not warning is checked in test_dpo.py);
- a run whose weights blow up (an absurd learning rate) fails the ``dpo`` stage of ``merge-search run`` in one
  line naming the cause and the fix, writes no ``done`` marker and no model, and leaves earlier results alone.
"""

from __future__ import annotations

import json

import yaml

from demo_configs import write_config
from search.cli import main


def _data(world) -> dict:
    return {"train": str(world.preferences["train"]), "heldout": str(world.preferences["test"]),
            "train_eval_rows": 16}


_SMALL = {"batch_size": 8, "grad_accum": 1, "max_length": 256, "gradient_checkpointing": False, "logging_steps": 1,
          "eval_batch_size": 32}


def test_overtrained_plain_dpo_warns_of_likelihood_displacement(world, tmp_path, capsys):
    cfg = {"dpo": {"data": _data(world), "train": {**_SMALL, "loss_type": ["sigmoid"], "best_checkpoint": "last",
                                                    "learning_rate": 1e-2, "warmup_ratio": 0.0, "max_steps": 16}}}
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["dpo", str(tmp_path / "dpo.yaml"), "--model", str(world.base), "--out", str(tmp_path / "out")]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    before, after = m["heldout_before"], m["heldout_after"]
    print(f"plain DPO: preference accuracy {before['pref_accuracy']} -> {after['pref_accuracy']}, chosen "
          f"{before['chosen_logp_per_token']:.3f} -> {after['chosen_logp_per_token']:.3f} nats/token, "
          f"{after['chosen_less_likely']:.0%} of them less likely")
    assert after["reward_margin"] > before["reward_margin"]  # what plain DPO optimises went up ...
    assert after["chosen_less_likely"] > 0.25  # ... by pushing many of the good answers down too
    assert len(m["warnings"]) == 1 and m["warnings"][0].startswith("likelihood displacement: ")
    err = capsys.readouterr().err
    assert "[dpo] WARNING: likelihood displacement: " in err
    assert m["train"]["best_step"] == m["train"]["steps"] == 16 and m["train"]["best_checkpoint"] == "last"


def _finished_export(world, run) -> dict:
    """A run folder whose search, held-out and export stages are done (the hand recipe as the winner)."""
    recipe = {"models": [{"model": str(world.base)}] + [
                  {"model": str(world.experts[s]), "parameters": {"density": 0.6, "weight": w}}
                  for s, w in (("zahlen", 0.3), ("artikel", 0.3), ("verben", 0.4))],
              "merge_method": "dare_ties", "base_model": str(world.base), "parameters": {"int8_mask": True},
              "dtype": "float32"}
    (run / "stages").mkdir(parents=True)
    (run / "best.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    (run / "best.json").write_text(json.dumps({"trial": 0, "seed": 0, "merge_device": "cpu",
                                               "reproduce": "mergekit-yaml best.yaml OUT --random-seed 0"}))
    for stage in ("search", "heldout", "export"):
        (run / "stages" / f"{stage}.json").write_text(json.dumps({"stage": stage}) + "\n")
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_diverged_dpo_fails_its_stage_in_one_line(world, tmp_path, capsys):
    config = write_config(world, tmp_path / "run.yaml", name="diverge")
    data = yaml.safe_load(config.read_text())
    data["dpo"] = {"data": _data(world), "train": {**_SMALL, "learning_rate": 1e30, "warmup_ratio": 0.0,
                                                   "max_steps": 3, "eval_steps": 1}}
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    run = tmp_path / "run"
    earlier = _finished_export(world, run)

    assert main(["run", str(config), "--out", str(run), "--only", "dpo"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    print(last)
    assert last.startswith("merge-search: error: dpo: training diverged (")
    assert "lower dpo.train.learning_rate (now 1e+30, try 1e+29)" in last
    assert not (run / "stages" / "dpo.json").exists()  # not done: the next run trains again
    assert not (run / "dpo").exists()  # nothing swapped in
    assert (run / ".dpo.staging" / "log_history.json").is_file()  # where it went wrong, named in the error
    assert str(run / ".dpo.staging" / "log_history.json") in last
    assert {p: p.read_bytes() for p in earlier} == earlier  # earlier results untouched
