"""The trl + peft side of the DPO stage (:mod:`search.stages.dpo`): the runtime, the (quantized) base and its
tokenizer, the trainer with its LoRA adapter and trainable token rows, the trained outputs.

bitsandbytes 4-bit is never used on CPU: after one eval-mode forward it repacks the weights and later backward
passes silently give no LoRA gradient (bitsandbytes 0.50.2). ``quant.mode: auto`` therefore means 4-bit on CUDA
and an unquantized base elsewhere; asking for ``4bit`` without CUDA is an error.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from objectives.errors import UserError
from objectives.templates import resolve_chat_template, template_tokens
from search.rundir import DPOOutputs
from search.dpo_config import BEST_METRICS, DPOStageConfig, QuantSection

__all__ = [
    "Runtime",
    "best_step",
    "dpo_args",
    "load_base",
    "load_model",
    "load_tokenizer",
    "log",
    "resolve_runtime",
    "save_outputs",
    "train",
    "train_metrics",
    "trainable_token_ids",
    "trainable_token_indices",
]


def log(msg: str) -> None:
    """One progress line of the DPO stage on stderr."""
    print(f"[dpo] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Runtime:
    """What ``auto`` settings resolved to on this machine."""

    device: str
    quantized: bool
    precision: str  # bf16 | fp16 | fp32


def resolve_runtime(cfg: DPOStageConfig) -> Runtime:
    """Resolve ``device``, ``quant.mode`` and ``train.precision``; impossible combinations are UserErrors."""
    import torch

    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and not cuda:
        raise UserError("dpo.device is 'cuda' but no CUDA device is available: set dpo.device to 'auto' or 'cpu'")
    quantized = cfg.quant.mode == "4bit" or (cfg.quant.mode == "auto" and device == "cuda")
    if quantized and device != "cuda":
        raise UserError("dpo.quant.mode '4bit' needs CUDA (bitsandbytes 4-bit on CPU silently stops LoRA "
                        "gradients): set dpo.quant.mode to 'auto' or 'none', or run on a GPU")
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device != "cuda":
        raise UserError("dpo.train.precision 'fp16' needs CUDA: use 'bf16' or 'fp32' (or 'auto') on CPU")
    return Runtime(device=device, quantized=quantized, precision=precision)


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
            "fp32": torch.float32, "float32": torch.float32}[name]


def load_tokenizer(cfg: DPOStageConfig, base: Path):
    """The tokenizer of ``base`` with ``dpo.chat_template`` set (``model``: its own, which it must have)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    template = resolve_chat_template(cfg.chat_template, "dpo.chat_template")
    if template is not None:
        tok.chat_template = template
    elif not tok.chat_template:
        raise UserError(f"dpo.chat_template is 'model' but the tokenizer of {str(base)!r} has no chat template: "
                        "set dpo.chat_template to 'chatml', a Jinja template or a .jinja file")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(base: Path, rt: Runtime, quant: QuantSection, *, full_precision: bool = False):
    """The base model: 4-bit NF4 on CUDA when ``rt.quantized`` (and not ``full_precision``), else unquantized."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if rt.quantized and not full_precision:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                                 bnb_4bit_use_double_quant=quant.double_quant,
                                 bnb_4bit_compute_dtype=_dtype(quant.compute_dtype))
        return AutoModelForCausalLM.from_pretrained(str(base), quantization_config=bnb,
                                                    dtype=_dtype(quant.compute_dtype), device_map={"": 0})
    dtype = _dtype(rt.precision) if rt.device == "cuda" else _dtype("fp32")
    return AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype).to(rt.device)


def load_base(cfg: DPOStageConfig, base: Path, rt: Runtime):
    """Model (quantized per ``rt``) and tokenizer (with the configured chat template) of ``base``; the tokenizer
    and the token rows to train are checked first, so a template or token problem is refused before the
    weights load."""
    if not (base / "config.json").is_file():
        raise UserError(f"DPO base {str(base)!r} is not a Hugging Face model folder (no config.json): "
                        "give a saved model folder, a recipe to re-merge, or set dpo.model")
    tokenizer = load_tokenizer(cfg, base)
    trainable_token_ids(cfg, tokenizer)
    log(f"base {base} on {rt.device} ({'QLoRA 4-bit' if rt.quantized else 'LoRA, unquantized'}, {rt.precision})")
    return load_model(base, rt, cfg.quant), tokenizer


def dpo_args(cfg: DPOStageConfig, rt: Runtime, out: DPOOutputs):
    """trl's ``DPOConfig``: the loss combination (``loss_type`` + ``loss_weights``), and unless
    ``best_checkpoint`` is ``last`` a held-out evaluation every ``eval_steps`` whose best checkpoint (saved only
    when it improves) is loaded at the end (``load_best_model_at_end``). NaN/inf losses are logged as they are
    (``logging_nan_inf_filter`` off) so that a diverged run shows in the log history."""
    from trl import DPOConfig

    t = cfg.train
    if t.best_checkpoint == "last":
        select = {"eval_strategy": "no", "save_strategy": "no"}
    else:
        metric, greater = BEST_METRICS[t.best_checkpoint]
        select = {"eval_strategy": "steps", "eval_steps": t.eval_steps, "save_strategy": "best",
                  "load_best_model_at_end": True, "metric_for_best_model": metric, "greater_is_better": greater,
                  "save_total_limit": 1, "save_only_model": True}
    return DPOConfig(
        output_dir=str(out.trainer), learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio, num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        per_device_eval_batch_size=t.eval_batch_size, beta=t.beta, loss_type=list(t.loss_type),
        loss_weights=t.weights(), max_length=t.max_length, bf16=rt.precision == "bf16",
        fp16=rt.precision == "fp16", use_cpu=rt.device == "cpu", activation_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps, logging_first_step=True, logging_nan_inf_filter=False, report_to="none",
        seed=t.seed, disable_tqdm=True,  # one bar of our own (StepBar) instead of a dict per logging step
        **select,
    )


def _step_bar():
    """A transformers ``TrainerCallback``: one progress bar over the training steps with the latest loss and
    implicit-reward accuracy, in place of the Trainer's printed log dicts."""
    from transformers import TrainerCallback

    from objectives.progress import progress_bar

    class StepBar(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress_bar(total=state.max_steps, desc="DPO", unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}",
                                     reward_acc=f"{float(logs.get('rewards/accuracies', float('nan'))):.2f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()
            self.bar = None

    return StepBar()


def trainable_token_ids(cfg: DPOStageConfig, tokenizer) -> list[int]:
    """The token ids ``dpo.lora.trainable_tokens`` names for ``tokenizer`` (a token it lacks: UserError)."""
    spec = cfg.lora.trainable_tokens
    if spec == "none":
        return []
    if spec == "template":
        return template_tokens(tokenizer)
    vocab = tokenizer.get_vocab()
    missing = [t for t in spec if t not in vocab]
    if missing:
        raise UserError(f"dpo.lora.trainable_tokens: {missing} are not tokens of the model's tokenizer: list "
                        "tokens of its vocabulary, or use 'template' or 'none'")
    return sorted({vocab[t] for t in spec})


def trainable_token_indices(cfg: DPOStageConfig, model, tokenizer) -> list[int] | None:
    """peft's ``trainable_token_indices``: the rows of :func:`trainable_token_ids` in the *input* embedding,
    trained besides LoRA; None: none. The output head's rows stay frozen: trl's DPO trainer scores through a
    fused LM head that reads ``lm_head.weight`` directly, so an adapter there would be bypassed (for the same
    reason a model with tied embeddings trains no extra rows)."""
    ids = trainable_token_ids(cfg, tokenizer)
    if not ids:
        return None
    names = tokenizer.convert_ids_to_tokens(ids)
    if getattr(model.config, "tie_word_embeddings", False):
        log(f"the rows of {names} stay frozen: the model ties its embeddings to the output head")
        return None
    log(f"training the input-embedding rows of {names} (dpo.lora.trainable_tokens)")
    return ids


def train(cfg: DPOStageConfig, model, tokenizer, data, rt: Runtime, out: DPOOutputs):
    """Run DPO; returns the trainer (its ``model`` is the PEFT model with the trained adapter: the best
    checkpoint's by ``dpo.train.best_checkpoint``, evaluated on the first ``dpo.data.heldout_eval_rows``
    held-out pairs; the checkpoints are removed afterwards, ``save_outputs`` writes what is kept)."""
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from trl import DPOTrainer

    if rt.quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
                      trainable_token_indices=trainable_token_indices(cfg, model, tokenizer))
    evaluate = cfg.train.best_checkpoint != "last"
    eval_set = Dataset.from_list(data.heldout[:cfg.data.heldout_eval_rows]) if evaluate else None
    try:
        trainer = DPOTrainer(model=model, args=dpo_args(cfg, rt, out), train_dataset=Dataset.from_list(data.train),
                             eval_dataset=eval_set, processing_class=tokenizer, peft_config=lora)
    except ValueError as err:  # e.g. target modules not in the model, an unknown loss_type
        raise UserError(f"dpo: trainer rejected the config: {str(err).splitlines()[0]}") from None
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    trainer.add_callback(_step_bar())
    trainer.train()
    if evaluate and trainer.state.best_model_checkpoint:
        log(f"kept the checkpoint of step {best_step(trainer)} of {trainer.state.global_step} (best held-out "
            f"{trainer.args.metric_for_best_model} {trainer.state.best_metric:.4g}; dpo.train.best_checkpoint "
            f"{cfg.train.best_checkpoint})")
    for checkpoint in Path(out.trainer).glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    return trainer


def best_step(trainer) -> int:
    """The optimizer step whose weights the trainer holds: the best checkpoint's, else the last."""
    best = trainer.state.best_model_checkpoint
    if best and trainer.args.load_best_model_at_end:
        return int(Path(best).name.rsplit("-", 1)[-1])
    return trainer.state.global_step


def train_metrics(trainer, data, cfg: DPOStageConfig) -> dict:
    """Final train loss and the DPO implicit-reward accuracy/margin on (up to ``train_eval_rows``) train pairs."""
    from datasets import Dataset

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    ev = trainer.evaluate(eval_dataset=Dataset.from_list(data.train[:cfg.data.train_eval_rows]))
    return {
        "loss": losses[-1] if losses else None,
        "mean_loss": next((h["train_loss"] for h in history if "train_loss" in h), None),
        "steps": trainer.state.global_step,
        "reward_accuracy": ev.get("eval_rewards/accuracies"),
        "reward_margin": ev.get("eval_rewards/margins"),
        "eval_loss": ev.get("eval_loss"),
        "n": min(len(data.train), cfg.data.train_eval_rows),
    }


def save_outputs(cfg: DPOStageConfig, trainer, tokenizer, base: Path, rt: Runtime, out: DPOOutputs):
    """Save the adapter, then the merged full model (on an unquantized base when training was quantized)."""
    from peft import PeftModel

    trainer.model.save_pretrained(str(out.adapter))
    tokenizer.save_pretrained(str(out.adapter))
    if rt.quantized:
        import torch

        trainer.model = None  # free the quantized weights before loading the full-precision base
        torch.cuda.empty_cache()
        full = load_model(base, rt, cfg.quant, full_precision=True)
        merged = PeftModel.from_pretrained(full, str(out.adapter)).merge_and_unload()
    else:
        merged = trainer.model.merge_and_unload()
    merged.save_pretrained(str(out.model), safe_serialization=True)
    tokenizer.save_pretrained(str(out.model))
    return merged
