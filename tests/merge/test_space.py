"""The search space: validation against mergekit's declared parameters, Optuna sampling, recipes both ways."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mergekit.config import MergeConfiguration

from objectives.errors import UserError
from objectives.schema import validate
from search.merge import SpaceConfig, params_from_recipe, recipe_yaml, suggest_params, to_merge_config

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"
HUB = {
    "base_model": "mistralai/Mistral-7B-v0.1",
    "models": [
        {"model": "DiscoResearch/DiscoLM_German_7b_v1", "name": "disco"},
        {"model": "DRXD1000/Phoenix-7B", "name": "Phoenix"},
        {"model": "OpenPipe/mistral-ft-optimized-1227"},
    ],
    "parameters": {"int8_mask": True},
    "tokenizer": {"source": "union"},  # as configs/german-7b.yaml
    "chat_template": "chatml",
}


def space(**over) -> SpaceConfig:
    return validate(SpaceConfig, {**HUB, **over}, "space")


def dump(cfg: MergeConfiguration) -> dict:
    return yaml.safe_load(recipe_yaml(cfg))


def test_defaults_search_density_and_weight_per_model():
    sp = space()
    assert sp.merge_method == "dare_ties" and sp.dtype == "bfloat16"
    names = [s.name for s in sp.searched]
    assert names == ["disco.density", "disco.weight", "Phoenix.density", "Phoenix.weight",
                     "mistral-ft-optimized-1227.density", "mistral-ft-optimized-1227.weight"]
    dens = sp.searched[0].spec
    assert (dens.low, dens.high) == (0.1, 1.0)


def test_seed_recipe_round_trips_through_the_space():
    recipe = yaml.safe_load((RECIPES / "discophoenix.yaml").read_text())
    sp = space()
    params = params_from_recipe(sp, recipe)
    assert params["disco.density"] == 0.6 and params["mistral-ft-optimized-1227.weight"] == 0.4
    assert dump(to_merge_config(sp, params)) == dump(MergeConfiguration.model_validate(recipe))


def test_sampled_params_build_a_valid_config_and_enqueue_round_trips():
    sp = space(parameters={"int8_mask": True, "normalize": {"choices": [True, False]},
                           "lambda": {"low": 0.5, "high": 1.5}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    params = suggest_params(sp, trial)
    assert set(params) == {s.name for s in sp.searched} and set(trial.params) == set(params)
    cfg = to_merge_config(sp, params)
    assert cfg.parameters["lambda"] == params["lambda"]
    assert MergeConfiguration.model_validate(yaml.safe_load(recipe_yaml(cfg))).to_yaml() == cfg.to_yaml()
    # a hand recipe enqueued into the study comes back as exactly its parameters
    back = params_from_recipe(sp, cfg)
    assert back == params
    study.enqueue_trial(back)
    t2 = study.ask()
    assert suggest_params(sp, t2) == params


def test_fixed_trial_gives_the_same_config():
    sp = space(models=[{"model": "a/x", "parameters": {"density": 0.6}}, {"model": "b/y"}])
    params = {"x.weight": 0.25, "y.density": 0.5, "y.weight": 0.75}
    assert suggest_params(sp, optuna.trial.FixedTrial(params)) == params
    models = dump(to_merge_config(sp, params))["models"]
    assert models[0] == {"model": "mistralai/Mistral-7B-v0.1"}
    assert models[1]["parameters"] == {"density": 0.6, "weight": 0.25}


def test_granularity_layer_groups_and_filters():
    sp = space(models=[{"model": "a/x", "parameters": {"density": 0.7}}], layer_groups=3,
               filters=["self_attn", "mlp"])
    names = [s.name for s in sp.searched]
    assert names[:3] == ["x.weight@self_attn[0]", "x.weight@self_attn[1]", "x.weight@self_attn[2]"]
    assert len(names) == 9
    params = {n: round(0.1 * (i + 1), 2) for i, n in enumerate(names)}
    weight = dump(to_merge_config(sp, params))["models"][1]["parameters"]["weight"]
    assert weight == [{"filter": "self_attn", "value": [0.1, 0.2, 0.3]},
                      {"filter": "mlp", "value": [0.4, 0.5, 0.6]}, {"value": [0.7, 0.8, 0.9]}]
    assert params_from_recipe(sp, to_merge_config(sp, params)) == params


def test_linear_has_no_base_input_and_only_weights():
    sp = space(merge_method="linear", parameters={})
    assert [s.name for s in sp.searched] == ["disco.weight", "Phoenix.weight", "mistral-ft-optimized-1227.weight"]
    cfg = to_merge_config(sp, {s.name: 0.5 for s in sp.searched})
    assert cfg.base_model is None and len(cfg.models) == 3


@pytest.mark.parametrize("over, needle", [
    ({"models": [{"model": "a/x", "parameters": {"desnity": 0.5}}]}, "did you mean 'density'"),
    ({"merge_method": "dare_tie"}, "did you mean 'dare_ties'"),
    ({"parameters": {"int8_mask": True, "density": 0.5}}, "per-model parameter"),
    ({"models": [{"model": "a/x", "parameters": {"int8_mask": True}}]}, "shared parameter"),
    ({"parameters": {"int8_mask": {"low": 0, "high": 1}}}, "boolean, so it cannot be a range"),
    ({"models": [{"model": "a/x", "parameters": {"density": {"low": 0.9, "high": 0.1}}}]},
     "`low <= high` must hold, but got (low=0.9, high=0.1)"),
    ({"models": [{"model": "a/x", "parameters": {"density": 1.5}}]}, "0 <= density <= 1"),
    ({"models": [{"model": "a/x"}, {"model": "b/x"}]}, "'x' is used twice"),
    ({"models": [{"model": "a/x", "parameters": {"density": {"low": 0.1, "hihg": 0.5}}}]}, "hihg: unknown field"),
    ({"merge_method": "linear", "models": [{"model": "a/x", "parameters": {"density": 0.5}}]},
     "not a per-model parameter of linear"),
])
def test_bad_spaces_are_one_line_user_errors(over, needle):
    with pytest.raises(UserError) as err:
        space(**over)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_problem_of_a_space_is_reported_and_counted_at_once():
    with pytest.raises(UserError) as err:
        space(models=[{"model": "a/x", "parameters": {"desnity": 0.5}}, {"model": "b/y", "parameters": {"density": 1.5}}],
              parameters={"int8_mask": {"low": 0, "high": 1}}, filters=["mlp", "mlp"])
    msg = str(err.value)
    assert "4 config error(s)" in msg and "\n" not in msg
    for needle in ("did you mean 'density'", "0 <= density <= 1", "boolean, so it cannot be a range",
                   "each filter must appear once"):
        assert needle in msg


def test_recipes_that_do_not_fit_the_space_are_rejected():
    recipe = yaml.safe_load((RECIPES / "discophoenix.yaml").read_text())
    narrow = space(models=[{"model": "DiscoResearch/DiscoLM_German_7b_v1", "name": "disco",
                            "parameters": {"density": {"low": 0.7, "high": 1.0}}},
                           {"model": "DRXD1000/Phoenix-7B", "name": "Phoenix"}, {"model": "OpenPipe/mistral-ft-optimized-1227"}])
    with pytest.raises(UserError, match=r"disco.density=0.6 is outside the space range \[0.7, 1.0\]"):
        params_from_recipe(narrow, recipe)
    with pytest.raises(UserError, match="fixes int8_mask=False"):
        params_from_recipe(space(parameters={"int8_mask": False}), recipe)
    with pytest.raises(UserError, match="recipe has no model 'other/model'"):
        params_from_recipe(space(models=[{"model": "other/model"}]), recipe)
    with pytest.raises(UserError, match="differs from space.merge_method 'ties'"):
        params_from_recipe(space(merge_method="ties"), recipe)
    with pytest.raises(UserError, match="recipe tokenizer is {'source': 'union'} but the space's is not set"):
        params_from_recipe(space(tokenizer=None), recipe)  # the hand recipe would build another tokenizer
    with pytest.raises(UserError, match="recipe chat_template is 'chatml' but the space's is 'llama3'"):
        params_from_recipe(space(chat_template="llama3"), recipe)
    with pytest.raises(UserError, match="missing from the sampled values"):
        to_merge_config(space(), {})
