"""The MT-Bench stage (``mtbench``): which models answer, how a model source becomes a chat model, and the comparison.

The stage itself (questions -> answers -> judge -> scores) lives in :mod:`objectives.mtbench`; this module
connects it to runs: :func:`run_mtbench_stage` answers with the sources (``pipeline.mtbench_sources``), the
re-merged winner and the DPO model of a run folder, one folder per model (resumable per model), and writes the
side-by-side comparison. :func:`chat_model` turns a model folder, a recipe (re-merged by
:func:`search.merge.remerge`) or an OpenAI-compatible endpoint into a chat model; :func:`mtbench_config` reads
the ``mtbench:`` section of a run config with overrides on top.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from objectives.mtbench.client import HttpSettings
from objectives.mtbench.compare import bar_chart, comparison_table, load_scores
from objectives.mtbench.config import MTBenchConfig
from objectives.mtbench.generate import EndpointChatModel, LocalChatModel
from objectives.mtbench.prompts import load_prompts
from objectives.mtbench.questions import source_problems as question_problems
from objectives.mtbench.run import CACHE_DIR, SCORES_FILE, rated, run_mtbench
from objectives.schema import load_yaml, validate
from objectives.templates import resolve_chat_template
from search import atomic
from search.config import RunConfig, load_run_config
from search.merge import Recipe, record_of, remerge
from search.merge.sources import model_folder_problems
from search.preflight import raise_problems
from search.rundir import RunDir
from search.stages.base import StageContext
from search.stages.candidates import candidates
from search.stages.chat_templates import merge_template, source_templates

__all__ = ["NAME", "SECTIONS", "chat_model", "mtbench_config", "mtbench_models", "problems", "run",
           "run_mtbench_stage"]

NAME = "mtbench"
SECTIONS = ("mtbench",)


def problems(cfg: RunConfig, run: RunDir) -> list[str]:
    """The question set, the judge prompts file, the configured chat template, and the models that would answer
    without a template."""
    out = question_problems(cfg.mtbench.questions)
    if cfg.mtbench.judge.prompts:
        try:
            load_prompts(cfg.mtbench.judge.prompts)
        except UserError as err:
            out.append(f"mtbench.judge.prompts: {err}")
    try:
        _template(cfg.mtbench)
    except UserError as err:
        out.append(str(err))
        return out
    if cfg.mtbench.chat_template in (None, "model"):
        found = source_templates(cfg.space)
        asked = {"the merge": merge_template(cfg.space, found)[0]} | (found if cfg.pipeline.mtbench_sources else {})
        lacking = [name for name, has in asked.items() if has is False]
        if lacking:
            out.append(f"mtbench.chat_template is not set but these models have no chat template: "
                       f"{', '.join(lacking)}: set mtbench.chat_template (chatml, a Jinja template or a .jinja "
                       "file; models with their own template keep it)")
    return out


def run(cfg: RunConfig, run: RunDir, ctx: StageContext) -> None:
    """:func:`run_mtbench_stage`; a stage re-run on purpose (``ctx.redo``) re-judges every model (answers asked
    with the same settings come from the stage's cache)."""
    run_mtbench_stage(cfg, run, log=ctx.log, redo=ctx.redo)


def mtbench_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> MTBenchConfig:
    """The ``mtbench:`` section of the run config at ``path`` (defaults without one), with ``overrides`` on top:
    ``{field: value}`` and ``{"judge": {field: value}}``; the result is validated as a whole."""
    base: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        if {"name", "space"} & set(data):  # a whole run config: validated as one
            base = load_run_config(path, resolve=False).mtbench.model_dump()
        else:
            base = validate(MTBenchConfig, data.get("mtbench") or {}, f"{path}: mtbench").model_dump()
    overrides = dict(overrides or {})
    judge = {**base.get("judge", {}), **overrides.pop("judge", {})}
    return validate(MTBenchConfig, {**base, **overrides, "judge": judge}, f"{path or 'command line'}: mtbench")


def chat_model(source: str | Recipe, cfg: MTBenchConfig, *, endpoint_model: str | None = None,
               endpoint_api_key_env: str = "OPENAI_API_KEY", merge_seed: int = 0):
    """A chat model for ``source``: a model folder, a recipe (a ``.yaml`` file or a :class:`~search.merge.Recipe`,
    merged in memory) or an endpoint URL."""
    recipe = source if isinstance(source, Recipe) else None
    if recipe is None and source.startswith(("http://", "https://")):
        if not endpoint_model:
            raise UserError(f"model {source!r} is an endpoint: also name the model there (endpoint_model)")
        j = cfg.judge
        return EndpointChatModel(HttpSettings(
            base_url=source, model=endpoint_model, api_key_env=endpoint_api_key_env, concurrency=j.concurrency,
            retries=j.retries, backoff_s=j.backoff_s, max_backoff_s=j.max_backoff_s, timeout_s=j.timeout_s))
    path = Path(source) if recipe is None else None
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"mtbench.device {cfg.device!r} but torch sees no CUDA device: use device cpu")
    if path is not None and path.is_dir():
        raise_problems(model_folder_problems(path, "model"), "mtbench")
        return LocalChatModel.from_pretrained(path, device=cfg.device, batch_size=cfg.batch_size, seed=cfg.seed,
                                              chat_template=_template(cfg))
    if recipe is not None or (path.is_file() and path.suffix in (".yaml", ".yml")):
        record = record_of(recipe or path, seed=merge_seed, device=cfg.device)
        res = remerge(record)
        fingerprint = json.dumps(["recipe", record.recipe, merge_seed, cfg.device])
        return LocalChatModel(res.model, res.tokenizer, device=cfg.device, batch_size=cfg.batch_size, seed=cfg.seed,
                              chat_template=_template(cfg),
                              fingerprint=fingerprint)
    raise UserError(
        f"model {source!r} is neither a model folder, a recipe .yaml nor an http(s) endpoint URL; give one of those"
    )


def _chat_model(cfg: RunConfig, name: str, path: Path | None, recipe) -> LocalChatModel:
    """The chat model of a source/merge folder or of a hand recipe's candidate (merged in memory)."""
    m = cfg.mtbench
    if recipe is not None:
        model, tok = recipe.load()
        return LocalChatModel(model, tok, device=m.device, batch_size=m.batch_size, chat_template=_template(m),
                              seed=m.seed)
    if not path.is_dir():
        raise UserError(f"mtbench: model folder {str(path)!r} for {name!r} is missing: re-run with from stage 'dpo' "
                        "(or download the source model)")
    return LocalChatModel.from_pretrained(path, device=m.device, batch_size=m.batch_size, chat_template=_template(m),
                                          seed=m.seed)


def _template(cfg: MTBenchConfig) -> str | None:
    return resolve_chat_template(cfg.chat_template, "mtbench.chat_template")


def mtbench_models(cfg: RunConfig, run: RunDir) -> dict[str, Path]:
    """``{name: model folder}``: the sources (with ``pipeline.mtbench_sources``), the merge and merge + DPO (the hand
    recipes, merged in memory, come from :func:`search.stages.candidates.candidates`)."""
    models: dict[str, Path] = {}
    if cfg.pipeline.mtbench_sources:
        models["base"] = Path(cfg.space.base_model)
        for m in cfg.space.models:
            models[m.name or Path(m.model).name] = Path(m.model)
    models["merge"] = run.dpo.base
    models["merge+dpo"] = run.dpo.model
    return models


def run_mtbench_stage(cfg: RunConfig, run: RunDir, *, log=print, redo: bool = False) -> None:
    """MT-Bench for every model of :func:`mtbench_models` and the hand recipes (``pipeline.mtbench_recipes``;
    models with scores already are skipped unless ``redo``), then ``models.json`` (each model's kind),
    ``comparison.md`` and ``comparison.png`` with the merge as the baseline.

    Each model is a transaction (:mod:`search.atomic`): it is answered and judged in a staging folder (seeded
    with the earlier answer/judgement cache) and swapped in when its ``scores.json`` exists, so a failure keeps
    every earlier model's results."""
    names, scores = [], []
    folders = mtbench_models(cfg, run)
    recipes = {c.name: c for c in candidates(cfg, [], []) if c.kind == "recipe"} if cfg.pipeline.mtbench_recipes \
        else {}
    for name in [n for n in folders if n not in ("merge", "merge+dpo")] + list(recipes) + ["merge", "merge+dpo"]:
        out = run.mtbench_model(name)
        if redo or not (out / SCORES_FILE).is_file() or not rated(load_scores(out / SCORES_FILE)):  # resume
            log(f"MT-Bench: {name}")
            model = _chat_model(cfg, name, folders.get(name), recipes.get(name))
            atomic.build(out, lambda stage: run_mtbench(cfg.mtbench, stage, model=model, model_id=name),
                         keep=(CACHE_DIR,))
        names.append(name)
        scores.append(load_scores(out / SCORES_FILE))
    kinds = {n: n if n in ("merge", "merge+dpo") else "recipe" if n in recipes else "source" for n in names}
    atomic.write_json(run.mtbench_kinds, kinds)
    baseline = names.index("merge") if "merge" in names else 0
    atomic.write_text(run.comparison_md, comparison_table(scores, names, baseline=baseline) + "\n")
    bar_chart(scores, names, run.comparison_png)
