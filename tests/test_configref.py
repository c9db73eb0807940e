"""docs/config-reference.md is the schema's own reference (regenerate with `merge-search config-reference`)."""

from __future__ import annotations

import re
from pathlib import Path

from search.config import RunConfig
from search.configref import config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def test_docs_config_reference_matches_schema():
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", text, flags=re.DOTALL)
    assert m, "docs/config-reference.md lacks the config-reference block"
    assert m.group(1) == config_reference(), (
        "docs/config-reference.md is stale: replace the block with `merge-search config-reference`")


def test_reference_lists_every_top_level_key():
    ref = config_reference()
    for key in RunConfig.model_fields:
        assert f"| `{key}` |" in ref
    assert "`space.models[].model`" in ref and "**required**" in ref
