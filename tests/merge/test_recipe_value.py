"""A recipe is one value: parsed and validated once, equal across its forms, carried from the record to the merger."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mergekit.config import MergeConfiguration

from objectives.errors import UserError
from search.merge import Recipe, merge_to_dir, record_of, remerge, strict, with_recipe
from search.rundir import TrialRecord

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"
HUB = {"merge_method": "dare_ties", "base_model": "mistralai/Mistral-7B-v0.1", "dtype": "bfloat16",
       "models": [{"model": "mistralai/Mistral-7B-v0.1"},
                  {"model": "DRXD1000/Phoenix", "parameters": {"density": 0.6, "weight": 0.3}},
                  {"model": "DiscoResearch/DiscoLM_German_7b_v1", "parameters": {"density": [0.5, 0.7],
                                                                                 "weight": 0.4}}],
       "parameters": {"int8_mask": True}, "tokenizer": {"source": "union"}, "chat_template": "chatml"}


def test_a_recipe_equals_itself_across_text_dict_file_and_config(tmp_path):
    from_dict = Recipe.from_dict(HUB)
    path = tmp_path / "hub.yaml"
    path.write_text("# a comment mergekit ignores\n" + yaml.safe_dump(HUB, sort_keys=False))
    forms = [from_dict, Recipe.from_text(from_dict.text), Recipe.from_text(path.read_text(), label="by hand"),
             Recipe.from_file(path), Recipe.from_config(MergeConfiguration.model_validate(HUB)), Recipe.of(HUB),
             Recipe.from_dict(from_dict.dict()), Recipe.from_dict(yaml.safe_load(from_dict.text))]
    assert all(f == from_dict for f in forms) and len(set(forms)) == 1
    assert Recipe.from_text(path.read_text()).text == path.read_text()  # the text is kept verbatim
    assert Recipe.from_file(path).label == str(path) and Recipe.of(from_dict) is from_dict
    assert sorted(from_dict.referenced_models()) == ["DRXD1000/Phoenix", "DiscoResearch/DiscoLM_German_7b_v1",
                                                     "mistralai/Mistral-7B-v0.1"]
    assert from_dict.base_model == "mistralai/Mistral-7B-v0.1"
    assert Recipe.from_dict({**HUB, "dtype": "float32"}) != from_dict
    copy = from_dict.merge_config()
    copy.dtype = "float16"  # mergekit's planner may mutate its copy: the recipe stays as it was
    assert from_dict.config.dtype == "bfloat16" and from_dict == Recipe.from_dict(HUB)
    with pytest.raises(AttributeError):
        from_dict.text = "merge_method: linear"  # frozen


@pytest.mark.parametrize("make, message", [
    (lambda: Recipe.from_text("- a\n- b\n", "r.yaml"), r"^r\.yaml: a mergekit recipe is a YAML mapping .* got list"),
    (lambda: Recipe.from_text("a: [1\n", "r.yaml"), r"^r\.yaml: invalid YAML at line"),
    (lambda: Recipe.from_dict({**HUB, "merge_metod": "ties"}), r"^recipe: 1 recipe error\(s\): merge_metod: unknown"),
    (lambda: Recipe.from_dict({**HUB, "models": [{"model": "a/b", "parameters": {"desnity": 0.5}}]}, "hand"),
     r"^hand: 1 recipe error\(s\): models\[0\]\.parameters\.desnity: .*did you mean 'density'"),
    (lambda: Recipe.from_dict({**HUB, "tokenizer_source": "base"}), "mergekit refuses the recipe"),
    (lambda: Recipe.from_file("no/such.yaml"), "does not exist"),
])
def test_a_bad_recipe_is_one_user_error_naming_it(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_a_record_carries_its_recipe_and_its_sidecar_stays_the_same():
    record = record_of(HUB, seed=3, label="hub")
    assert record.parsed == Recipe.from_dict(HUB) and record.recipe == record.parsed.text
    assert with_recipe(record) is record
    plain = TrialRecord(recipe=record.recipe, seed=3, label="hub")
    assert plain == record and plain.parsed is None  # the parsed recipe is not part of the record's value
    assert with_recipe(plain).parsed == record.parsed
    assert record.sidecar("x.yaml", {}) == plain.sidecar("x.yaml", {}) and "parsed" not in record.sidecar("x.yaml", {})


@pytest.fixture
def validations(monkeypatch) -> list[dict]:
    """Every recipe mapping the strict validator checks (it runs once per parse of a recipe as given)."""
    seen: list[dict] = []
    check = strict.recipe_problems

    def counted(data):
        seen.append(data)
        return check(data)

    monkeypatch.setattr(strict, "recipe_problems", counted)
    return seen


def test_a_remerge_parses_and_validates_its_recipe_once(world, tmp_path, validations):
    from search.cli import main

    rec = yaml.safe_load((RECIPES / "demo-hand.yaml").read_text())
    for m in rec["models"]:
        m["model"] = str(world.root / "models" / Path(m["model"]).name)
    rec["base_model"] = str(world.base)
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump(rec))

    recorded = TrialRecord(recipe=Recipe.from_dict(rec).text, seed=0, label="trial 0")
    validations.clear()
    sha = remerge(recorded, out=tmp_path / "first").weights_sha256  # a recorded trial: its text is parsed here, once
    assert sha is not None
    assert len(validations) == 1
    validations.clear()
    assert remerge(record_of(path, weights_sha256=sha)).weights_sha256 == sha  # a recipe file, as `dpo --recipe`
    assert len(validations) == 1
    recipe = Recipe.from_file(path)
    validations.clear()
    assert merge_to_dir(recipe, tmp_path / "a")["weights_sha256"] == sha  # a Recipe value: never parsed again
    assert validations == []
    assert main(["merge", str(path), "--out", str(tmp_path / "b")]) == 0  # the command: once for checks and merge
    assert len(validations) == 1
