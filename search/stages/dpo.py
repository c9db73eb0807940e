"""DPO stage: (Q)LoRA DPO of the winning merge on German preference data, with trl + peft (+ bitsandbytes).

Recipe-shaped, one function per step::

    run_dpo(cfg, base, out)
      load_base   -> model + tokenizer (4-bit NF4 QLoRA base on CUDA, unquantized base on CPU)
      load_data   -> train / held-out pairs (bad rows reported, skipped or fatal)
      evaluate    -> held-out preference accuracy, margin and chosen answers' log-likelihood before training
      train       -> trl DPOTrainer with a peft LoraConfig (the reference is the base with the adapter disabled);
                     the loss is regularised by default ([sigmoid, sft]: DPO + the chosen answers' NLL), the
                     held-out pairs are evaluated every dpo.train.eval_steps and the best checkpoint is kept;
                     the embedding rows of the added tokens the chat template writes (ChatML added by a
                     fine-tune) train too, peft trainable_token_indices (dpo.lora.trainable_tokens)
      check       -> NaN/inf losses, rewards or trained weights: the stage fails (UserError), nothing is saved
      evaluate    -> the held-out scores after training + DPO implicit-reward accuracy on train pairs; chosen
                     answers that became less likely: the "likelihood displacement" warning (metrics warnings)
      save        -> adapter/, model/ (merged full model + tokenizer with its template), metrics.json, loss.png, config.yaml

Defaults are the seed's LLaMA-Factory run: QLoRA 4-bit NF4 double-quant bf16 compute, LoRA on q_proj,v_proj,
lr 5e-6, cosine, warmup 0.1, 3 epochs, batch 8 x grad-accum 4, ChatML, beta 0.1; the loss regularised and the
best held-out checkpoint kept (docs/dpo.md; the seed's plain DPO: dpo.train.loss_type [sigmoid]).

The trl + peft side (runtime, quantized base, trainer, outputs) is :mod:`search.stages.dpo_train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from objectives.config import ObjectiveConfig
from objectives.errors import UserError
from objectives.objective import cpu_threads
from objectives.preference import encode_pair, sequence_logps
from objectives.schema import load_yaml, validate
from search import atomic
from search.config import RunConfig, load_run_config
from search.merge import remerge
from search.merge.sources import model_folder_problems
from search.preflight import disk_problems, folder_bytes, output_problems
from search.rundir import DPOOutputs, RunDir, TrialRecord
from search.stages import prefdata
from search.stages.base import StageContext
from search.stages.chat_templates import merge_template
from search.dpo_config import DPOStageConfig
from search.stages.dpo_train import best_step, load_base, log, resolve_runtime, save_outputs, train, train_metrics
from search.stages.generation_check import generation_scores, generation_warning
from search.stages.model_card import write_dpo_card
from search.stages.plots import plot_loss

__all__ = [
    "NAME",
    "PER_PAIR",
    "SCORING_THREADS",
    "SECTIONS",
    "PrefData",
    "data_problems",
    "disk_need",
    "displacement_warning",
    "divergence",
    "heldout_scores",
    "load_data",
    "finished_problems",
    "load_dpo_config",
    "merge_base",
    "problems",
    "run",
    "run_dpo",
    "standalone_problems",
]

NAME = "dpo"
SECTIONS = ("dpo",)

# torch CPU threads while the stage scores on CPU (held-out preference accuracy, implicit-reward accuracy):
# the schema default of `objective.threads`, as the held-out stage scores
SCORING_THREADS: int | None = ObjectiveConfig.model_fields["threads"].default


@dataclass
class PrefData:
    train: list[dict]
    heldout: list[dict]
    report: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ the contract


def problems(cfg: RunConfig, run: RunDir) -> list[str]:
    """The preference data (:func:`data_problems`), the chat template the merge will train in, and free disk
    for its outputs (:func:`disk_need`)."""
    out = data_problems(cfg.dpo)
    out += disk_problems(run.root, disk_need(cfg), "the DPO stage's outputs")
    if cfg.dpo.chat_template == "model":
        has, donor = merge_template(cfg.space)
        if has is False:
            out.append(f"dpo.chat_template is 'model' but the merge will have no chat template ({donor!r} has none "
                       "and space.chat_template is not set): set space.chat_template, or dpo.chat_template to "
                       "chatml")
    return out


def disk_need(cfg: RunConfig) -> int:
    """Bytes the DPO stage writes beside the earlier outputs it replaces (which stay until the swap): the
    re-merged base and the merged DPO model, each about as large as the largest source, plus 20% of one for the
    adapter, its checkpoints and the tokenizer."""
    largest = max(folder_bytes(m) for m in cfg.space.model_paths())
    return int(largest * 2.2)


def run(cfg: RunConfig, run: RunDir, ctx: StageContext) -> dict:
    """The exported winner re-merged into ``RUN/dpo/base`` (hash-checked), then :func:`run_dpo` into
    ``RUN/dpo``, then the objective's generative tasks on their held-out documents before and after
    (:mod:`search.stages.generation_check`; a fall is a warning) added to ``metrics.json`` as ``generation``.

    A transaction (:mod:`search.atomic`): everything is built in ``RUN/.dpo.staging`` and swapped for ``RUN/dpo``
    only when complete, so a failed or killed attempt leaves the earlier DPO outputs as they were. Returns
    ``metrics.json``."""
    record = run.best_record()  # before anything is written: a missing or half-written export stops here

    def work(out: DPOOutputs) -> dict:
        merge_base(record, out)
        metrics = run_dpo(cfg.dpo, out.base, out.root, threads=cfg.objective.threads,
                          base_name=str(run.dpo.base))
        generation = generation_scores(cfg, out.base, out.model, log=log)
        if generation:
            warning = generation_warning(generation)
            metrics = {**metrics, "generation": generation,
                       "warnings": metrics.get("warnings", []) + ([warning] if warning else [])}
            if warning:
                log(f"WARNING: {warning}")
            atomic.write_json(out.metrics, metrics, indent=2)
        write_dpo_card(out.model / "README.md", run.root.name, record, run.best_yaml.name,
                       language=cfg.mtbench.language, dpo_cfg=cfg.dpo, metrics=metrics)
        return metrics

    return atomic.build(run.dpo.root, lambda stage: work(DPOOutputs(stage)))


def _pairs(source: str, split: str, tokenizer, cfg: DPOStageConfig) -> tuple[list[dict], dict]:
    rows = prefdata.load_rows(source, split=split)
    pairs, numbers, bad = prefdata.normalise(rows, source, cfg.data.columns)
    pairs, numbers = prefdata.check_lengths(pairs, numbers, tokenizer, cfg.train.max_length, bad)
    if bad.count:
        if cfg.data.bad_rows == "fail":
            raise UserError(bad.summary() + " (dpo.data.bad_rows is 'fail': fix the rows or set it to 'skip')")
        log("skipping " + bad.summary())
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


def data_problems(cfg: DPOStageConfig) -> list[str]:
    """The preference data, checked before any merge or model load: training data configured, local files
    present, readable and in a known row layout (rows are checked again, with the tokenizer, when loaded)."""
    if not cfg.data.train:
        return ["dpo.data.train is not set: give a .json/.jsonl/.parquet file or a Hugging Face dataset id "
                "with system/question/chosen/rejected or prompt/chosen/rejected columns"]
    problems = []
    for key, source, split in (("dpo.data.train", cfg.data.train, cfg.data.split),
                               ("dpo.data.heldout", cfg.data.heldout, cfg.data.heldout_split)):
        if not source:
            continue
        local = source.startswith((".", "/", "~")) or Path(source).suffix
        if local and not Path(source).expanduser().is_file():
            problems.append(f"{key} {source!r} does not exist: give a .json/.jsonl/.parquet file or a dataset id")
            continue
        if not local and not prefdata.in_hub_cache(source):
            log(f"{key} {source!r} is a hub dataset not in the local cache: not checked offline (its columns are "
                "read when the DPO stage downloads it)")
            continue
        if Path(source).suffix.lower() in prefdata.FILE_TYPES or not local:
            try:
                rows = prefdata.load_rows(source, split=split)
                pairs, _, bad = prefdata.normalise(rows, source, cfg.data.columns)
            except UserError as err:
                problems.append(str(err))
                continue
            if not local:
                log(f"{key} {source!r} (local hub cache, split {split!r}): {len(rows)} rows, {len(pairs)} usable pairs"
                    + (f" ({bad.count} bad)" if bad.count else ""))
    return problems


def finished_problems(out: DPOOutputs) -> list[str]:
    """An output folder that already holds a finished DPO run (never overwritten)."""
    if out.metrics.exists():
        return [f"{str(out.root)!r} already holds a DPO run ({out.metrics.name}): give a new folder"]
    return []


def standalone_problems(cfg: DPOStageConfig, out: DPOOutputs, *, model: str | Path | None = None,
                        inputs: list[str] = ()) -> list[str]:
    """A DPO run outside the pipeline: the output folder (new, or an unfinished DPO run of its own; never one
    of the ``inputs``), the preference data and the base model folder."""
    problems = finished_problems(out) + data_problems(cfg)
    problems += model_folder_problems(model, "DPO base model") if model else []
    return problems + output_problems(out.root, what="DPO output folder",
                                      inputs=list(inputs) + ([str(model)] if model else []), own=out.names())


def merge_base(record: TrialRecord, out: DPOOutputs):
    """The recorded merge re-created in ``out.base`` (hash-checked by :func:`search.merge.remerge`), what DPO
    starts from; returns the merge result (its ``weights_sha256``)."""
    return remerge(record, out=out.base)


def _raise(problems: list[str]) -> None:
    if problems:
        raise UserError("; ".join(problems) if len(problems) > 1 else problems[0])


def load_data(cfg: DPOStageConfig, tokenizer) -> PrefData:
    """Train and held-out pairs in trl's conversational layout; a report of sources and bad rows."""
    _raise(data_problems(cfg))
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


PER_PAIR = "chosen_logp_per_pair"  # the key of heldout_scores' per-pair list (not written to metrics.json)
LESS_LIKELY = math.log(1 / 0.9)  # a chosen answer "became less likely": it lost more than 10% of its probability


def heldout_scores(cfg: DPOStageConfig, model, tokenizer, data: PrefData, desc: str, *,
                   threads: int | None = SCORING_THREADS, before: dict | None = None) -> dict:
    """``model`` on every held-out pair (on CPU at ``threads`` torch threads), in one pass:

    - ``pref_accuracy``, ``reward_margin``, ``n``: as :func:`objectives.preference.preference_scores` (share of
      pairs whose chosen answer has the higher summed log-likelihood; mean difference in nats);
    - ``chosen_logp``: mean log-likelihood of a chosen answer (nats per answer, summed over its tokens);
    - ``chosen_logp_per_token``: log-likelihood of all chosen answers' tokens / their number (nats per token:
      what the ``sft`` loss term minimises the negative of); ``rejected_logp``: as ``chosen_logp``;
    - with ``before`` (these scores before training): ``chosen_less_likely``, the share of pairs whose chosen
      answer became less likely than before (lost more than 10% of its probability: :data:`LESS_LIKELY`);
    - :data:`PER_PAIR`: each pair's chosen log-likelihood (for ``before``; not a metric).
    """
    seqs: list[tuple[list[int], int]] = []
    for pair in data.heldout:
        ids_c, start_c, ids_r, start_r = encode_pair(tokenizer, pair, cfg.train.max_length)
        seqs += [(ids_c, start_c), (ids_r, start_r)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with cpu_threads(threads, next(model.parameters()).device):
        logps = sequence_logps(model, seqs, batch_size=2 * cfg.train.eval_batch_size, pad_id=pad, desc=desc)
    chosen, rejected = logps[0::2], logps[1::2]
    diffs = [c - r for c, r in zip(chosen, rejected)]
    tokens = sum(len(ids) - max(start, 1) for ids, start in seqs[0::2])  # the scored tokens ids[start:] (not ids[0])
    n = len(diffs)
    out = {"pref_accuracy": sum(d > 0 for d in diffs) / n, "reward_margin": sum(diffs) / n, "n": n,
           "chosen_logp": sum(chosen) / n, "chosen_logp_per_token": sum(chosen) / max(tokens, 1),
           "rejected_logp": sum(rejected) / n}
    if before is not None:
        out["chosen_less_likely"] = sum(a < b - LESS_LIKELY for a, b in zip(chosen, before[PER_PAIR])) / n
    return out | {PER_PAIR: chosen}


def displacement_warning(before: dict, after: dict, share: float) -> str | None:
    """The one-line "likelihood displacement" warning when training made the held-out chosen answers less
    likely: their log-likelihood per token fell, or more than ``share`` of them lost more than 10% of their
    probability (a few answers that gain a lot can hide many that lose); None when neither."""
    b, a = before["chosen_logp_per_token"], after["chosen_logp_per_token"]
    fell = after["chosen_less_likely"]
    if not (a < b or fell > share):
        return None
    return (f"likelihood displacement: {fell:.0%} of the held-out chosen answers lost more than 10% of their "
            f"probability (warned above {share:.0%}: dpo.displacement_share) and their log-likelihood went {b:.3f} "
            f"-> {a:.3f} nats/token, while preference accuracy went {before['pref_accuracy']:.3f} -> "
            f"{after['pref_accuracy']:.3f}: DPO widened the margin by making good answers less likely too, which "
            "degrades generated answers; add sft to "
            "dpo.train.loss_type (or raise its weight in dpo.train.loss_weights), or lower dpo.train.learning_rate "
            "or dpo.train.max_steps")


# log-history keys (also with an ``eval_`` prefix) that must stay finite: the losses and the implicit rewards
_WATCHED = ("loss", "train_loss", "rewards/", "logps/")


def divergence(history: list[dict], model=None, scores: dict | None = None) -> str | None:
    """What shows that training diverged, or None: the first NaN/inf loss or reward in the trainer's log
    history, non-finite trained (adapter) weights of ``model``, a non-finite value in ``scores``
    (``{what: number}``)."""
    for entry in history:
        for key, value in entry.items():
            name = key.removeprefix("eval_")
            if isinstance(value, float) and not math.isfinite(value) and name.startswith(_WATCHED):
                return f"{key} is {value} at step {entry.get('step', '?')}"
    if model is not None:
        import torch

        bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if bad:
            return f"{len(bad)} trained weight tensor(s) hold NaN/inf (e.g. {bad[0]})"
    for key, value in (scores or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key} is {value}"
    return None


def _fail_diverged(cause: str, cfg: DPOStageConfig, out: DPOOutputs) -> None:
    lr = cfg.train.learning_rate
    raise UserError(f"dpo: training diverged ({cause}): lower dpo.train.learning_rate (now {lr:g}, try "
                    f"{lr / 10:g}) or raise dpo.train.warmup_ratio, then run the stage again (no model or metrics "
                    f"were kept; the trainer's log: {str(out.log_history)!r})")


def run_dpo(cfg: DPOStageConfig, base: str | Path, out: str | Path, *,
            threads: int | None = SCORING_THREADS, base_name: str | None = None) -> dict:
    """The whole stage; returns ``metrics.json``'s content. ``base`` is a saved HF model folder; ``out`` gets
    the :class:`~search.rundir.DPOOutputs` layout. On CPU the held-out scoring runs at ``threads`` torch
    threads (None: torch's default); training keeps torch's default. ``base_name``: how ``config.yaml`` names
    the base (default ``base``; a transaction names where the base will be once swapped in).

    A diverged run (NaN/inf losses, rewards, trained weights or held-out scores) is a :class:`UserError` and
    writes no model and no ``metrics.json``; held-out chosen answers that became less likely are a
    "likelihood displacement" warning, logged and listed in ``metrics.json``'s ``warnings``."""
    base, files = Path(base), DPOOutputs(Path(out))
    _raise(finished_problems(files))
    rt = resolve_runtime(cfg)
    model, tokenizer = load_base(cfg, base, rt)
    data = load_data(cfg, tokenizer)
    log(f"{len(data.train)} train pairs, {len(data.heldout)} held-out pairs")
    before = heldout_scores(cfg, model, tokenizer, data, "held-out before", threads=threads)
    files.root.mkdir(parents=True, exist_ok=True)
    trainer = train(cfg, model, tokenizer, data, rt, files)
    history = list(trainer.state.log_history)
    _write_json(files.log_history, history)  # kept for a diverged run too: where it went wrong
    cause = divergence(history, trainer.model)
    if cause:
        _fail_diverged(cause, cfg, files)
    after = heldout_scores(cfg, trainer.model, tokenizer, data, "held-out after", threads=threads, before=before)
    before, after = ({k: v for k, v in d.items() if k != PER_PAIR} for d in (before, after))
    with cpu_threads(threads, rt.device):
        train_scores = train_metrics(trainer, data, cfg)
    train_scores["best_step"] = best_step(trainer)
    train_scores["best_checkpoint"] = cfg.train.best_checkpoint
    scores = {**{f"held-out {k} after training": v for k, v in after.items()},
              **{f"train {k}": v for k, v in train_scores.items()}}
    cause = divergence(trainer.state.log_history, scores=scores)
    if cause:
        _fail_diverged(cause, cfg, files)
    warnings = [w for w in [displacement_warning(before, after, cfg.displacement_share)] if w]
    for warning in warnings:
        log(f"WARNING: {warning}")
    metrics = {"heldout_before": before, "heldout_after": after, "train": train_scores, "warnings": warnings}
    history = list(trainer.state.log_history)
    save_outputs(cfg, trainer, tokenizer, base, rt, files)
    plot_loss(history, files.loss_png)
    _write_json(files.data_report, data.report)
    _write_json(files.log_history, history)
    resolved = {"dpo": cfg.model_dump(mode="json"), "base": base_name or str(base),
                "runtime": {"device": rt.device, "quantized": rt.quantized, "precision": rt.precision}}
    files.config.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8")
    _write_json(files.metrics, metrics)  # last: its presence marks a finished run
    log(f"held-out preference accuracy {before['pref_accuracy']:.3f} -> {after['pref_accuracy']:.3f}, chosen "
        f"answers {before['chosen_logp_per_token']:.3f} -> {after['chosen_logp_per_token']:.3f} nats/token, "
        f"train loss {metrics['train']['loss']:.4f}; adapter, model, metrics and loss plot in {files.root}")
    return metrics


def _write_json(path: Path, data) -> None:
    atomic.write_json(path, data, indent=2)
