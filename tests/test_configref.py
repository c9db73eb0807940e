"""README's config reference is the schema's own (regenerate with `merge-search config-reference`)."""

from __future__ import annotations

import re
from pathlib import Path

from search.config import RunConfig
from search.configref import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_matches_schema():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", text, flags=re.DOTALL)
    assert m, "README lacks the config-reference block"
    assert m.group(1) == config_reference(), (
        "README's config reference is stale: replace the block with `merge-search config-reference`")


def test_reference_lists_every_top_level_key():
    ref = config_reference()
    for key in RunConfig.model_fields:
        assert f"| `{key}` |" in ref
    assert "`space.models[].model`" in ref and "**required**" in ref
