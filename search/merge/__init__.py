"""Merging: the search space, recipes, the in-memory merge engine, re-merging recorded trials, hashing.

Only :mod:`search.merge.mergekit_compat` touches mergekit's internals; everything else uses it. A recipe is one
:class:`Recipe` value (:mod:`search.merge.recipe_value`), parsed and validated once -- strictly, by
:mod:`search.merge.strict` -- and handed on from the trial record to the merger.
"""

from search.merge import mergekit_compat
from search.merge.engine import MergeError, MergeResult, ResidentMerger, reseed
from search.merge.export import merge_to_dir, record_of, remerge, save_merge, versions, with_recipe
from search.merge.hashing import hash_model_dir, saved_tensors, weights_sha256
from search.merge.recipe import (
    params_from_recipe,
    recipe_dict,
    recipe_text,
    recipe_yaml,
    suggest_params,
    to_merge_config,
)
from search.merge.recipe_value import Recipe
from search.merge.space import Choice, ModelSpace, ParamSlot, Range, SpaceConfig

__all__ = [
    "Choice",
    "MergeError",
    "MergeResult",
    "ModelSpace",
    "ParamSlot",
    "Range",
    "Recipe",
    "ResidentMerger",
    "SpaceConfig",
    "hash_model_dir",
    "merge_to_dir",
    "mergekit_compat",
    "params_from_recipe",
    "recipe_dict",
    "recipe_text",
    "recipe_yaml",
    "record_of",
    "remerge",
    "reseed",
    "save_merge",
    "saved_tensors",
    "suggest_params",
    "to_merge_config",
    "versions",
    "weights_sha256",
    "with_recipe",
]
