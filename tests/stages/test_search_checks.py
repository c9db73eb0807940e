"""The search stage's own checks that need no world: token embedding sources."""

from __future__ import annotations

from objectives.schema import validate
from search.config import RunConfig
from search.stages.optimize import token_source_problems


def _cfg(tokens: dict) -> RunConfig:
    space = {"base_model": "b", "models": [{"model": "x"}, {"model": "y"}],
             "tokenizer": {"source": "union", "tokens": tokens}}
    return validate(RunConfig, {"name": "t", "space": space, "objective": {"tasks": [{"name": "a"}]}}, "t")


def test_a_token_embedding_from_a_model_outside_the_merge_is_named():
    good = {"<|im_end|>": {"source": "x"}, "<a>": {"source": {"kind": "model_token", "model": "b", "token": "</s>"}},
            "<z>": {"source": {"kind": "zero"}}}
    assert token_source_problems(_cfg(good)) == []
    [problem] = token_source_problems(_cfg({**good, "<|im_start|>": {"source": "missing/model"}}))
    assert "tokens['<|im_start|>'].source names 'missing/model'" in problem and "space.models" in problem
