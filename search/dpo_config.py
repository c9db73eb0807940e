"""The ``dpo:`` section of a run config: every default is the seed's LLaMA-Factory run (see
:mod:`search.stages.dpo`)."""

from __future__ import annotations

from typing import Literal

import pydantic

from objectives.errors import UserError
from objectives.schema import Strict, refused_key
from objectives.templates import resolve_chat_template

__all__ = ["DPOStageConfig", "DataSection", "LoraSection", "QuantSection", "TrainSection"]


class DataSection(Strict):
    """Where the preference pairs come from and what to do with bad rows."""

    train: str | None = None  # local .json/.jsonl/.parquet or a Hugging Face dataset id (required to run)
    heldout: str | None = None  # given held-out set; None: split off ``heldout_fraction`` of ``train``
    split: str = "train"  # dataset split of ``train`` when it is a Hugging Face id
    heldout_split: str = "test"  # dataset split of ``heldout`` when it is a Hugging Face id
    heldout_fraction: float = pydantic.Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = 0
    bad_rows: Literal["skip", "fail"] = "skip"
    max_train_rows: int | None = pydantic.Field(None, ge=1)  # cap on training pairs (quick runs)
    train_eval_rows: int = pydantic.Field(256, ge=1)  # training pairs scored for the implicit-reward accuracy


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
    loss_type: tuple[str, ...] = ("sigmoid",)
    max_length: int = pydantic.Field(1024, ge=2)  # longer pairs are bad rows (skipped or fatal)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA if supported, else fp32
    gradient_checkpointing: bool = True
    logging_steps: int = pydantic.Field(10, ge=1)
    eval_batch_size: int = pydantic.Field(8, ge=1)
    seed: int = 42


class DPOStageConfig(Strict):
    """The ``dpo:`` section of a run config; every field has the seed's default."""

    model: str | None = None  # base model dir when neither --model nor --recipe is given
    output_dir: str = "results/dpo"
    chat_template: str = pydantic.Field("chatml", description=(
        "the template the pairs are rendered (and the model saved) in: `chatml` (built in, the seed's chatml_de), "
        "`model` (the tokenizer's own, e.g. what a recipe's `chat_template` gave the merge), a Jinja template or a "
        ".jinja file"))
    device: Literal["auto", "cpu", "cuda"] = "auto"
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
