"""A study remembers its sources' fingerprints: resuming it on other weights under the same paths is refused."""

from __future__ import annotations

import optuna
import torch
from safetensors.torch import save_file

from objectives.schema import validate
from search.config import RunConfig
from search.merge.hashing import source_fingerprint
from search.rundir import TrialAttr
from search.stages.optimize import source_fingerprints, study_fingerprint, study_owner_problems


def _source(folder, seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "mistral"}')
    g = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)},
              str(folder / "model.safetensors"))
    return folder


def test_source_fingerprint_sees_other_weights_and_ignores_hub_ids(tmp_path):
    a = _source(tmp_path / "a", 0)
    first = source_fingerprint(a)
    assert first == source_fingerprint(a) and len(first) == 64
    _source(a, 1)  # same names, shapes and sizes; other values
    assert source_fingerprint(a) != first
    assert source_fingerprint("mistralai/Mistral-7B-v0.1") is None


def test_a_study_resumed_on_other_source_weights_is_refused(tmp_path):
    paths = [_source(tmp_path / n, i) for i, n in enumerate(("base", "x", "y"))]
    cfg = validate(RunConfig, {"name": "t", "space": {"base_model": str(paths[0]),
                                                      "models": [{"model": str(p)} for p in paths[1:]]},
                               "objective": {"tasks": [{"name": "a"}]}}, "t")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="t")
    study.set_user_attr(TrialAttr.STUDY_CONFIG, study_fingerprint(cfg))  # as the search stage records them
    study.set_user_attr(TrialAttr.STUDY_SOURCES, source_fingerprints(cfg))
    assert study_owner_problems(cfg, url) == []
    _source(paths[1], 7)  # x replaced by other weights under the same path
    [problem] = study_owner_problems(cfg, url)
    assert "other weights of" in problem and str(paths[1]) in problem and "search.study_name" in problem
