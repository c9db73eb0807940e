"""Every YAML under configs/ validates (recursively), without downloading anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from objectives.schema import load_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FOUND = sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))
EXPECTED = 6  # update when a config is added or removed


def kind(path: Path, data: dict) -> str:
    if "recipes" in path.relative_to(CONFIGS).parts:
        return "recipe"
    if set(data) == {"dpo"}:
        return "dpo"
    return "run"


def test_every_config_was_found():
    assert len(FOUND) == EXPECTED, [str(p.relative_to(CONFIGS)) for p in FOUND]


@pytest.mark.parametrize("path", FOUND, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_validates(path, world, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # paths in configs are relative to the repository root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = load_yaml(path)
    k = kind(path, data)
    if k == "recipe":
        from mergekit.config import MergeConfiguration

        assert MergeConfiguration.model_validate(data).merge_method
    elif k == "dpo":
        from objectives.schema import validate
        from search.dpo_config import DPOStageConfig

        validate(DPOStageConfig, data["dpo"], str(path))
    else:
        from objectives.objective import check_config
        from search.config import load_run_config
        from search.merge import params_from_recipe

        cfg = load_run_config(path)
        assert path.read_text(encoding="utf-8").startswith("#"), "a run config starts with a how-to-run header"
        assert check_config(cfg.objective) == []
        for r in cfg.recipes:
            params_from_recipe(cfg.space, r)  # hand recipes lie inside the search space


def test_the_old_stages_key_is_one_error_naming_rungs_beside_the_other_sections_errors():
    from objectives.errors import UserError
    from objectives.schema import validate
    from search.config import RunConfig

    data = {"name": "x", "space": {"base_model": "a/b", "models": [{"model": "c/d"}]},
            "objective": {"tasks": [{"name": "arc_de"}], "stages": [50, "all"]}, "search": {"n_trails": 3}}
    with pytest.raises(UserError) as e:
        validate(RunConfig, data, "c.yaml")
    msg = str(e.value)
    assert "2 config error(s)" in msg and msg.count("stages") == 1 and "search.n_trails" in msg
    assert "objective: `stages` was renamed to `rungs` (objective.rungs:" in msg
