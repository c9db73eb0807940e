"""The DPO stage's guards without a world: the regularised default loss and its validation, the trainer settings
that keep the best held-out checkpoint, the likelihood-displacement warning and the divergence check."""

from __future__ import annotations

import math

import pytest
import yaml

from objectives.errors import UserError
from objectives.schema import validate
from search.dpo_config import DPOStageConfig
from search.rundir import DPOOutputs
from search.stages.dpo import displacement_warning, divergence, load_dpo_config
from search.stages.dpo_train import Runtime, dpo_args

CPU = Runtime(device="cpu", quantized=False, precision="fp32")


def test_default_is_regularised_and_round_trips(tmp_path):
    cfg = DPOStageConfig()
    assert cfg.train.loss_type == ("sigmoid", "sft") and cfg.train.weights() == [1.0, 1.0]
    assert cfg.train.best_checkpoint == "loss"
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump({"dpo": cfg.model_dump(mode="json")}), encoding="utf-8")
    again, _ = load_dpo_config(path)
    assert again == cfg
    # the seed's plain DPO stays one key away, and weights go with their losses
    plain = validate(DPOStageConfig, {"train": {"loss_type": ["sigmoid"]}}, "t")
    assert plain.train.weights() == [1.0]
    rpo = validate(DPOStageConfig, {"train": {"loss_weights": [1.0, 0.5]}}, "t")
    assert rpo.train.weights() == [1.0, 0.5]


def test_loss_settings_are_validated_all_at_once():
    with pytest.raises(UserError) as err:
        validate(DPOStageConfig, {"train": {"loss_type": ["sigmod", "sft"], "learning_rate": 0,
                                            "eval_steps": 2.5, "best_checkpoint": "first"}}, "run.yaml (dpo)")
    msg = str(err.value)
    assert "\n" not in msg and "4 config error(s)" in msg
    assert "'sigmod' is not a trl DPO loss (did you mean 'sigmoid'?): fix dpo.train.loss_type" in msg
    assert "train.eval_steps: 2.5 is neither a whole number of steps nor a fraction below 1" in msg
    assert "train.best_checkpoint" in msg and "train.learning_rate" in msg
    with pytest.raises(UserError) as err:
        validate(DPOStageConfig, {"train": {"loss_type": ["sigmoid"], "loss_weights": [1.0, 1.0]}}, "t")
    assert ("[1.0, 1.0] has 2 weight(s) for the 1 loss(es) of dpo.train.loss_type ['sigmoid']: give one weight "
            "per loss, or remove dpo.train.loss_weights") in str(err.value)
    for weights, rule in (([0.0, 0.0], "are all 0"), ([1.0, -1.0], "negative weight"),
                          ([1.0, math.nan], "train.loss_weights")):
        with pytest.raises(UserError, match=rule):
            validate(DPOStageConfig, {"train": {"loss_weights": weights}}, "t")


def test_trainer_keeps_the_best_heldout_checkpoint(tmp_path):
    out = DPOOutputs(tmp_path / "out")
    args = dpo_args(DPOStageConfig(), CPU, out)
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 1.0]
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.greater_is_better is False and args.eval_strategy == "steps" and args.eval_steps == 0.1
    assert args.logging_nan_inf_filter is False  # a NaN loss shows in the log history
    chosen = dpo_args(validate(DPOStageConfig, {"train": {"best_checkpoint": "chosen_logps", "eval_steps": 5}},
                                "t"), CPU, out)
    assert chosen.metric_for_best_model == "eval_logps/chosen" and chosen.greater_is_better is True
    assert chosen.eval_steps == 5
    last = dpo_args(validate(DPOStageConfig, {"train": {"best_checkpoint": "last", "loss_type": ["sigmoid"]}},
                              "t"), CPU, out)
    assert not last.load_best_model_at_end and last.eval_strategy == "no" and last.save_strategy == "no"
    assert last.loss_type == ["sigmoid"] and last.loss_weights == [1.0]


def _scores(acc: float, per_token: float, fell: float | None = None) -> dict:
    return {"pref_accuracy": acc, "reward_margin": 1.0, "n": 10, "chosen_logp": per_token * 10,
            "chosen_logp_per_token": per_token, "rejected_logp": -30.0, "chosen_less_likely": fell}


def test_displacement_warning_fires_only_when_chosen_answers_become_less_likely():
    before = _scores(0.6, -0.9)
    warning = displacement_warning(before, _scores(0.8, -1.4, 0.9), 0.4)
    assert warning.startswith("likelihood displacement: 90% of the held-out chosen answers lost more than 10% of their probability")
    assert "\n" not in warning and "-0.900 -> -1.400 nats/token" in warning and "0.600 -> 0.800" in warning
    assert "dpo.train.loss_type" in warning and "dpo.train.learning_rate" in warning
    assert displacement_warning(before, _scores(0.8, -0.5, 0.1), 0.4) is None
    assert displacement_warning(before, _scores(0.8, -0.9, 0.4), 0.4) is None  # unchanged, at the share
    # the pooled mean rose (a few answers gained a lot) but most chosen answers became less likely
    assert displacement_warning(before, _scores(0.8, -0.5, 0.55), 0.4).startswith("likelihood displacement: 55%")
    assert displacement_warning(before, _scores(0.8, -0.95, 0.0), 0.4) is not None  # the pooled mean fell


def test_divergence_names_the_first_non_finite_loss_reward_or_score():
    fine = [{"loss": 0.7, "rewards/margins": 0.1, "step": 1}, {"eval_loss": 0.6, "step": 2}]
    assert divergence(fine) is None
    assert divergence(fine + [{"loss": math.nan, "step": 3}]) == "loss is nan at step 3"
    assert divergence(fine + [{"eval_rewards/chosen": -math.inf, "step": 4}]) == "eval_rewards/chosen is -inf at step 4"
    assert divergence([{"grad_norm": math.inf, "step": 1}]) is None  # a skipped fp16 step is no divergence
    assert divergence([], scores={"held-out reward_margin": math.nan}) == "held-out reward_margin is nan"

    import torch

    layer = torch.nn.Linear(2, 2)
    assert divergence([], layer) is None
    with torch.no_grad():
        layer.weight[0, 0] = math.inf
    assert divergence([], layer) == "1 trained weight tensor(s) hold NaN/inf (e.g. weight)"
    layer.weight.requires_grad_(False)  # frozen weights are the base's, not training's
    assert divergence([], layer) is None
