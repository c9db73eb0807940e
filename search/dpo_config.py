"""The ``dpo:`` section of a run config. The defaults are the seed's LLaMA-Factory run (see
:mod:`search.stages.dpo`) with two guards against a DPO that silently degrades the model: the loss is
regularised (``train.loss_type: [sigmoid, sft]``, the DPO loss plus the NLL of the chosen answers, as in RPO;
the seed's plain DPO is ``loss_type: [sigmoid]``) and the checkpoint kept is the best on the held-out pairs
(``train.best_checkpoint``), not the last."""

from __future__ import annotations

from typing import Literal

import pydantic

from objectives.errors import UserError, did_you_mean
from objectives.schema import ConfigProblems, Strict, refused_key
from objectives.templates import resolve_chat_template
from search.stages.pref_layouts import COLUMN_ROLES

__all__ = ["BEST_METRICS", "DPOStageConfig", "DataSection", "LOSS_TYPES", "LoraSection", "QuantSection",
           "TrainSection"]

# trl 1.16's DPOConfig.loss_type values (a list of them is combined with ``loss_weights``)
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")

# ``train.best_checkpoint`` -> (the trainer's held-out metric, greater is better); ``last`` keeps the last step
BEST_METRICS = {"loss": ("eval_loss", False), "chosen_logps": ("eval_logps/chosen", True)}


class DataSection(Strict):
    """Where the preference pairs come from and what to do with bad rows."""

    train: str | None = None  # local .json/.jsonl/.parquet or a Hugging Face dataset id (required to run)
    heldout: str | None = None  # given held-out set; None: split off ``heldout_fraction`` of ``train``
    split: str = "train"  # dataset split of ``train`` when it is a Hugging Face id
    heldout_split: str = "test"  # dataset split of ``heldout`` when it is a Hugging Face id
    columns: dict[str, str] | None = pydantic.Field(None, description=(
        "the dataset's own column names mapped onto a known layout, `{role: column}` with roles system, question, "
        "prompt, instruction, input, output, conversations, chosen, rejected (e.g. `{prompt: frage, chosen: gut, "
        "rejected: schlecht}`); None: the layout is detected (orca, alpaca/sharegpt ranking, trl, conversations)"))
    heldout_fraction: float = pydantic.Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = 0
    bad_rows: Literal["skip", "fail"] = "skip"
    max_train_rows: int | None = pydantic.Field(None, ge=1)  # cap on training pairs (quick runs)
    train_eval_rows: int = pydantic.Field(256, ge=1)  # training pairs scored for the implicit-reward accuracy
    heldout_eval_rows: int = pydantic.Field(256, ge=1, description=(
        "held-out pairs the trainer evaluates every `train.eval_steps` to pick the best checkpoint (the first N); "
        "the checks before and after training score every held-out pair"))


    @pydantic.field_validator("columns")
    @classmethod
    def _known_roles(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        unknown = sorted(set(value or {}) - set(COLUMN_ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}: map columns to {list(COLUMN_ROLES)}")
        return value


class LoraSection(Strict):
    r: int = pydantic.Field(8, ge=1)
    alpha: int = pydantic.Field(16, ge=1)
    dropout: float = pydantic.Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    trainable_tokens: Literal["template", "none"] | tuple[str, ...] = pydantic.Field("template", description=(
        "input-embedding rows trained besides LoRA (peft trainable_token_indices): `template` = the added tokens the "
        "chat template writes (ChatML added by a fine-tune); `none`; or a list of tokens. lm_head stays frozen"))


class QuantSection(Strict):
    """``auto``: 4-bit (QLoRA) on CUDA, unquantized elsewhere."""

    mode: Literal["auto", "4bit", "none"] = "auto"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class TrainSection(Strict):
    learning_rate: float = pydantic.Field(5e-6, gt=0.0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    epochs: float = pydantic.Field(3.0, gt=0.0)
    max_steps: int | None = pydantic.Field(None, ge=1)  # overrides ``epochs`` when set
    batch_size: int = pydantic.Field(8, ge=1)
    grad_accum: int = pydantic.Field(4, ge=1)
    beta: float = pydantic.Field(0.1, gt=0.0)
    loss_type: tuple[str, ...] = pydantic.Field(("sigmoid", "sft"), description=(
        "trl DPO loss(es), summed with `loss_weights`: the default `[sigmoid, sft]` is DPO plus the mean NLL of "
        "the chosen answers' tokens (RPO-style), which keeps DPO from pushing down the likelihood of both "
        "answers; `[sigmoid]` is the seed's plain DPO"))
    loss_weights: tuple[float, ...] | None = pydantic.Field(None, description=(
        "one weight per `loss_type` entry; null: 1.0 each"))
    best_checkpoint: Literal["loss", "chosen_logps", "last"] = pydantic.Field("loss", description=(
        "the checkpoint kept: `loss` = lowest held-out loss of the training objective (with `sft` it includes "
        "the held-out chosen answers' NLL), `chosen_logps` = highest held-out log-likelihood of the chosen "
        "answers, both evaluated every `eval_steps` on `data.heldout_eval_rows` held-out pairs; `last` = the "
        "last step, no evaluation during training (the seed)"))
    eval_steps: float = pydantic.Field(0.1, gt=0.0, description=(
        "how often the held-out evaluation for `best_checkpoint` runs: every N optimizer steps (an integer >= 1) "
        "or a fraction of the training steps (below 1)"))
    max_length: int = pydantic.Field(1024, ge=2)  # longer pairs are bad rows (skipped or fatal)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA if supported, else fp32
    gradient_checkpointing: bool = True
    logging_steps: int = pydantic.Field(10, ge=1)
    eval_batch_size: int = pydantic.Field(8, ge=1)
    seed: int = 42

    @pydantic.field_validator("loss_type")
    @classmethod
    def _known_losses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        if not value:
            problems.append("is empty: give at least one loss, e.g. dpo.train.loss_type: [sigmoid, sft] (or "
                            "[sigmoid], the seed's plain DPO)")
        for name in value:
            if name not in LOSS_TYPES:
                problems.append(f"{name!r} is not a trl DPO loss{did_you_mean(name, LOSS_TYPES, listing=True)}: "
                                "fix dpo.train.loss_type")
        if len(set(value)) != len(value):
            problems.append(f"{list(value)} names a loss twice: list each loss once in dpo.train.loss_type and "
                            "weight it with dpo.train.loss_weights")
        if problems:
            raise ConfigProblems(problems)
        return value

    @pydantic.field_validator("loss_weights")
    @classmethod
    def _one_weight_per_loss(cls, value: tuple[float, ...] | None, info: pydantic.ValidationInfo):
        if value is None:
            return value
        problems = []
        losses = info.data.get("loss_type")  # absent when loss_type itself is wrong (reported there)
        if losses is not None and len(value) != len(losses):
            problems.append(f"{list(value)} has {len(value)} weight(s) for the {len(losses)} loss(es) of "
                            f"dpo.train.loss_type {list(losses)}: give one weight per loss, or remove "
                            "dpo.train.loss_weights (1.0 each)")
        if any(w < 0 for w in value):
            problems.append(f"{list(value)} has a negative weight: give weights >= 0 in dpo.train.loss_weights")
        elif value and not any(w > 0 for w in value):
            problems.append(f"{list(value)} are all 0 (nothing would be trained): give a positive weight in "
                            "dpo.train.loss_weights")
        if problems:
            raise ConfigProblems(problems)
        return value

    @pydantic.field_validator("eval_steps")
    @classmethod
    def _steps_or_fraction(cls, value: float) -> float:
        if value >= 1 and not float(value).is_integer():
            raise ValueError(f"{value} is neither a whole number of steps nor a fraction below 1: set "
                             "dpo.train.eval_steps to e.g. 20 (steps) or 0.1 (of the training steps)")
        return value

    def weights(self) -> list[float]:
        """``loss_weights`` resolved: one per ``loss_type`` entry (1.0 each when not given)."""
        return list(self.loss_weights) if self.loss_weights is not None else [1.0] * len(self.loss_type)


class DPOStageConfig(Strict):
    """The ``dpo:`` section of a run config; every field has a default (the seed's, except the regularised
    loss and the best checkpoint)."""

    model: str | None = None  # base model dir when neither --model nor --recipe is given
    output_dir: str = "results/dpo"
    chat_template: str = pydantic.Field("chatml", description=(
        "the template the pairs are rendered (and the model saved) in: `chatml` (built in, the seed's chatml_de), "
        "`model` (the tokenizer's own, e.g. what a recipe's `chat_template` gave the merge), a Jinja template or a "
        ".jinja file"))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    displacement_share: float = pydantic.Field(0.25, ge=0.0, le=1.0, description=(
        "the \"likelihood displacement\" warning fires when training made the held-out chosen answers less likely "
        "per token, or made more than this share of them lose more than 10% of their probability"))
    data: DataSection = DataSection()
    lora: LoraSection = LoraSection()
    quant: QuantSection = QuantSection()
    train: TrainSection = TrainSection()

    _renamed = refused_key("template", "`template` is now `chat_template` (same values: chatml, model; also Jinja "
                                       "or a .jinja file): rename the key")

    @pydantic.field_validator("chat_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        try:
            resolve_chat_template(value, "dpo.chat_template")
        except UserError as err:
            raise ValueError(str(err).split(": ", 1)[1]) from None
        return value
