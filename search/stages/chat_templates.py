"""Which chat template a run's models will have: each source's own, and the merge's (checked by the stages
that talk to the models, DPO and MT-Bench, before anything is created)."""

from __future__ import annotations

from search.merge.sources import has_chat_template
from search.merge.space import SpaceConfig

__all__ = ["chat_objective_problems", "merge_template", "source_templates"]


def source_templates(space: SpaceConfig) -> dict[str, bool | None]:
    """``{source: has a chat template}`` (None: cannot tell offline, e.g. an uncached hub id)."""
    return {m: has_chat_template(m) for m in space.model_paths()}


def merge_template(space: SpaceConfig, found: dict[str, bool | None] | None = None) -> tuple[bool | None, str]:
    """Whether the merge will have a chat template, and the model its tokenizer comes from. The merge's
    template is ``space.chat_template``, else that of the model its tokenizer comes from (``auto``: mergekit
    picks the sources' most common template, so any source's will do). ``found``: :func:`source_templates`,
    when the caller has it already."""
    found = source_templates(space) if found is None else found
    source = space.vocabulary_source
    donor = source if source not in (None, "base", "union") else space.base_model
    if space.chat_template == "auto":
        return (True if any(found.values()) else None if None in found.values() else False), donor
    if space.chat_template:
        return True, donor
    return (found[donor] if donor in found else has_chat_template(donor)), donor


def chat_objective_problems(objective, space: SpaceConfig) -> list[str]:
    """The chat objective asks every model it scores in its chat template: the merges of the search and the
    sources the held-out stage compares. Without ``objective.chat.chat_template`` each of them needs its own."""
    if objective.chat is None or objective.chat.chat_template not in (None, "model"):
        return []
    found = source_templates(space)
    has, donor = merge_template(space, found)
    lacking = ([f"the merge (its tokenizer comes from {donor!r})"] if has is False else []) + \
        [m for m, ok in found.items() if ok is False]
    return [f"objective.chat.chat_template is not set but these models have no chat template: {', '.join(lacking)} "
            "(the search asks the merges, the held-out stage the sources too): set objective.chat.chat_template "
            "(chatml, a Jinja template or a .jinja file; models with their own template keep it)"] if lacking else []
