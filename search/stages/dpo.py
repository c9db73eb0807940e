"""DPO stage: (Q)LoRA DPO of the winning merge on German preference data, with trl + peft (+ bitsandbytes).

Recipe-shaped, one function per step::

    run_dpo(cfg, base, out)
      load_base   -> model + tokenizer (4-bit NF4 QLoRA base on CUDA, unquantized base on CPU)
      load_data   -> train / held-out pairs (bad rows reported, skipped or fatal)
      evaluate    -> held-out preference accuracy before training
      train       -> trl DPOTrainer with a peft LoraConfig (the reference is the base with the adapter disabled);
                     the embedding rows of the added tokens the chat template writes (ChatML added by a
                     fine-tune) train too, peft trainable_token_indices (dpo.lora.trainable_tokens)
      evaluate    -> held-out preference accuracy after training + DPO implicit-reward accuracy on train pairs
      save        -> adapter/, model/ (merged full model + tokenizer with its template), metrics.json, loss.png, config.yaml

Defaults are the seed's LLaMA-Factory run: QLoRA 4-bit NF4 double-quant bf16 compute, LoRA on q_proj,v_proj,
lr 5e-6, cosine, warmup 0.1, 3 epochs, batch 8 x grad-accum 4, ChatML, beta 0.1.

bitsandbytes 4-bit is never used on CPU: after one eval-mode forward it repacks the weights and later backward
passes silently give no LoRA gradient (bitsandbytes 0.50.2). ``quant.mode: auto`` therefore means 4-bit on CUDA
and an unquantized base elsewhere; asking for ``4bit`` without CUDA is an error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from objectives.config import ObjectiveConfig
from objectives.errors import UserError
from objectives.objective import cpu_threads
from objectives.preference import preference_scores
from objectives.schema import load_yaml, validate
from objectives.templates import resolve_chat_template, template_tokens
from search.config import load_run_config
from search.rundir import DPOOutputs
from search.stages import prefdata
from search.stages.dpo_config import DPOStageConfig, QuantSection
from search.stages.plots import plot_loss

__all__ = [
    "SCORING_THREADS",
    "PrefData",
    "Runtime",
    "load_base",
    "load_data",
    "load_dpo_config",
    "require_data",
    "resolve_runtime",
    "run_dpo",
    "save_outputs",
    "train",
    "trainable_token_ids",
    "trainable_token_indices",
]


# torch CPU threads while the stage scores on CPU (held-out preference accuracy, implicit-reward accuracy):
# the schema default of `objective.threads`, as the held-out stage scores
SCORING_THREADS: int | None = ObjectiveConfig.model_fields["threads"].default


@dataclass(frozen=True)
class Runtime:
    """What ``auto`` settings resolved to on this machine."""

    device: str
    quantized: bool
    precision: str  # bf16 | fp16 | fp32


@dataclass
class PrefData:
    train: list[dict]
    heldout: list[dict]
    report: dict = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[dpo] {msg}", file=sys.stderr, flush=True)


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
                        "pass --model DIR of a saved model, --recipe FILE.yaml, or set dpo.model")
    tokenizer = load_tokenizer(cfg, base)
    trainable_token_ids(cfg, tokenizer)
    _log(f"base {base} on {rt.device} ({'QLoRA 4-bit' if rt.quantized else 'LoRA, unquantized'}, {rt.precision})")
    return load_model(base, rt, cfg.quant), tokenizer


def _pairs(source: str, split: str, tokenizer, cfg: DPOStageConfig) -> tuple[list[dict], dict]:
    rows = prefdata.load_rows(source, split=split)
    pairs, numbers, bad = prefdata.normalise(rows, source)
    pairs, numbers = prefdata.check_lengths(pairs, numbers, tokenizer, cfg.train.max_length, bad)
    if bad.count:
        if cfg.data.bad_rows == "fail":
            raise UserError(bad.summary() + " (dpo.data.bad_rows is 'fail': fix the rows or set it to 'skip')")
        _log("skipping " + bad.summary())
    if not pairs:
        raise UserError(f"preference data {source!r}: no usable pair left ({bad.summary()})")
    return pairs, {"source": source, "rows": len(rows), "usable": len(pairs), "bad": bad.count,
                   "bad_rows": {k: list(v) for k, v in bad.reasons.items()}}


def load_dpo_config(path: str | Path) -> tuple[DPOStageConfig, int]:
    """The ``dpo:`` section of ``path`` and the run seed.

    A full run config (``name``, ``space``, ``objective``, ...) is loaded as a whole with
    :func:`search.config.load_run_config` (``dpo.device: auto`` follows the run's device); a file holding only
    a ``dpo:`` section (``configs/dpo-demo.yaml``) is validated as a :class:`DPOStageConfig` alone, seed 0.
    """
    data = load_yaml(path)
    if not isinstance(data, dict) or not ({"dpo", "name", "space"} & set(data)):
        raise UserError(f"{path}: not a run config: give a YAML mapping with a `dpo:` section "
                        "(see configs/dpo-demo.yaml) or a whole run config (name, space, objective, dpo)")
    if set(data) == {"dpo"}:
        return validate(DPOStageConfig, data["dpo"] or {}, f"{path} (dpo)"), 0
    run = load_run_config(path)
    return run.dpo, run.seed


def require_data(cfg: DPOStageConfig) -> None:
    """Fail early (before any merge or model load) when no training data is configured, or when a local data
    file cannot be read or has no usable row layout (rows are checked again, with the tokenizer, later)."""
    if not cfg.data.train:
        raise UserError("dpo.data.train is not set: give a .json/.jsonl/.parquet file or a Hugging Face dataset id "
                        "with system/question/chosen/rejected or prompt/chosen/rejected columns")
    for source in (cfg.data.train, cfg.data.heldout):
        if source and Path(source).suffix.lower() in prefdata.FILE_TYPES:
            prefdata.normalise(prefdata.load_rows(source), source)


def load_data(cfg: DPOStageConfig, tokenizer) -> PrefData:
    """Train and held-out pairs in trl's conversational layout; a report of sources and bad rows."""
    require_data(cfg)
    train, train_rep = _pairs(cfg.data.train, cfg.data.split, tokenizer, cfg)
    if cfg.data.heldout:
        heldout, held_rep = _pairs(cfg.data.heldout, cfg.data.heldout_split, tokenizer, cfg)
    else:
        train, heldout = prefdata.split_heldout(train, cfg.data.heldout_fraction, cfg.data.split_seed)
        held_rep = {"source": f"{cfg.data.heldout_fraction:g} of train (seed {cfg.data.split_seed})",
                    "usable": len(heldout)}
    if cfg.data.max_train_rows is not None:
        train = train[:cfg.data.max_train_rows]
    return PrefData(train=train, heldout=heldout,
                    report={"train": train_rep, "heldout": held_rep, "n_train": len(train), "n_heldout": len(heldout)})


def _dpo_args(cfg: DPOStageConfig, rt: Runtime, out: DPOOutputs):
    from trl import DPOConfig

    t = cfg.train
    return DPOConfig(
        output_dir=str(out.trainer), learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio, num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        per_device_eval_batch_size=t.eval_batch_size, beta=t.beta, loss_type=list(t.loss_type),
        max_length=t.max_length, bf16=rt.precision == "bf16", fp16=rt.precision == "fp16",
        use_cpu=rt.device == "cpu", activation_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps, logging_first_step=True, save_strategy="no", report_to="none",
        seed=t.seed, disable_tqdm=True,  # one bar of our own (StepBar) instead of a dict per logging step
    )


def _step_bar():
    """A transformers ``TrainerCallback``: one progress bar over the training steps with the latest loss and
    implicit-reward accuracy, in place of the Trainer's printed log dicts."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class StepBar(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, desc="DPO", unit="step", leave=False)

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
        _log(f"the rows of {names} stay frozen: the model ties its embeddings to the output head")
        return None
    _log(f"training the input-embedding rows of {names} (dpo.lora.trainable_tokens)")
    return ids


def train(cfg: DPOStageConfig, model, tokenizer, data: PrefData, rt: Runtime, out: DPOOutputs):
    """Run DPO; returns the trainer (its ``model`` is the PEFT model with the trained adapter)."""
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from trl import DPOTrainer

    if rt.quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
                      trainable_token_indices=trainable_token_indices(cfg, model, tokenizer))
    try:
        trainer = DPOTrainer(model=model, args=_dpo_args(cfg, rt, out), train_dataset=Dataset.from_list(data.train),
                             processing_class=tokenizer, peft_config=lora)
    except ValueError as err:  # e.g. target modules not in the model, an unknown loss_type
        raise UserError(f"dpo: trainer rejected the config: {str(err).splitlines()[0]}") from None
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    trainer.add_callback(_step_bar())
    trainer.train()
    return trainer


def train_metrics(trainer, data: PrefData, cfg: DPOStageConfig) -> dict:
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


def heldout_scores(cfg: DPOStageConfig, model, tokenizer, data: PrefData, desc: str, *,
                   threads: int | None = SCORING_THREADS) -> dict:
    """Held-out preference accuracy and mean log-likelihood margin of ``model`` (scored on CPU at ``threads``
    torch threads)."""
    return preference_scores(model, tokenizer, data.heldout, batch_size=cfg.train.eval_batch_size,
                             max_length=cfg.train.max_length, desc=desc, threads=threads)


def run_dpo(cfg: DPOStageConfig, base: str | Path, out: str | Path, *,
            threads: int | None = SCORING_THREADS) -> dict:
    """The whole stage; returns ``metrics.json``'s content. ``base`` is a saved HF model folder; ``out`` gets
    the :class:`~search.rundir.DPOOutputs` layout. On CPU the preference scoring runs at ``threads`` torch
    threads (None: torch's default); training keeps torch's default."""
    base, files = Path(base), DPOOutputs(Path(out))
    if files.metrics.exists():
        raise UserError(f"--out {str(files.root)!r} already holds a DPO run ({files.metrics.name}): give a new folder")
    rt = resolve_runtime(cfg)
    model, tokenizer = load_base(cfg, base, rt)
    data = load_data(cfg, tokenizer)
    _log(f"{len(data.train)} train pairs, {len(data.heldout)} held-out pairs")
    before = heldout_scores(cfg, model, tokenizer, data, "held-out before", threads=threads)
    files.root.mkdir(parents=True, exist_ok=True)
    trainer = train(cfg, model, tokenizer, data, rt, files)
    after = heldout_scores(cfg, trainer.model, tokenizer, data, "held-out after", threads=threads)
    with cpu_threads(threads, rt.device):
        train_scores = train_metrics(trainer, data, cfg)
    metrics = {"heldout_before": before, "heldout_after": after, "train": train_scores}
    history = list(trainer.state.log_history)
    save_outputs(cfg, trainer, tokenizer, base, rt, files)
    plot_loss(history, files.loss_png)
    _write_json(files.metrics, metrics)
    _write_json(files.data_report, data.report)
    _write_json(files.log_history, history)
    resolved = {"dpo": cfg.model_dump(mode="json"), "base": str(base),
                "runtime": {"device": rt.device, "quantized": rt.quantized, "precision": rt.precision}}
    files.config.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8")
    _log(f"held-out preference accuracy {before['pref_accuracy']:.3f} -> {after['pref_accuracy']:.3f}, train "
         f"loss {metrics['train']['loss']:.4f}; adapter, model, metrics and loss plot in {files.root}")
    return metrics


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
