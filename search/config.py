"""The run config: one YAML file with every section of a run (``configs/*.yaml``).

::

    name: demo                 # run folder default: results/<name>
    seed: 0
    device: auto               # cpu | cuda | auto (cuda when torch sees one); resolved when loaded
    space: {...}               # search.merge.space.SpaceConfig
    objective: {...}           # objectives.config.ObjectiveConfig
    recipes: [hand.yaml]       # hand recipes (paths or inline mergekit configs); default: the seed recipe

Relative paths (models, include paths, recipe files) are relative to the working directory:
run the commands from the repository root. :func:`load_run_config` validates the file (every problem in one
error), resolves ``device: auto`` and fills in the default recipe; :func:`save_run_config` writes that
resolved config, which loads back to the same object. The config knows nothing of the demo worlds: a world is
built beforehand (``merge-search demo-world build``, ``make demo``) and named by its model paths.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from objectives.config import ObjectiveConfig
from objectives.errors import UserError
from objectives.mtbench.config import MTBenchConfig
from objectives.schema import ConfigProblems, Strict, load_yaml, validate
from search import atomic
from search.driver.study import SearchConfig, check_sampler
from search.merge.mergekit_compat import method_parameters
from search.merge.recipe import params_from_recipe, recipe_dict
from search.merge.space import Choice, Range, SpaceConfig
from search.dpo_config import DPOStageConfig

__all__ = [
    "SEED_DENSITY",
    "SEED_WEIGHTS",
    "PipelineConfig",
    "RunConfig",
    "load_run_config",
    "resolve_device",
    "save_run_config",
    "seed_recipe",
]

LOG = logging.getLogger("merge_search")

# The seed recipe: DARE-TIES with density 0.6 for every model and weights 0.3 / 0.3 / 0.4 (three models;
# other counts get equal weights).
SEED_DENSITY = 0.6
SEED_WEIGHTS = (0.3, 0.3, 0.4)


class PipelineConfig(Strict):
    """The ``pipeline:`` section: how ``merge-search run`` links the stages."""

    top_k: int = pydantic.Field(3, ge=1)  # trials re-evaluated on the held-out split (the winner among them)
    mtbench_sources: bool = True  # also run MT-Bench on the source models (base + candidates)
    mtbench_recipes: bool = pydantic.Field(True, description=(
        "also run MT-Bench on the hand recipes (`recipes:`, else the seed recipe), merged in memory: the merge must "
        "beat them on the final measure too"))


class RunConfig(Strict):
    """A whole run: search space, objective, hand recipes and run-wide settings."""

    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = pydantic.Field(0, ge=0, le=2**31 - 2)  # trial seeds are derived from it (numpy/torch seed range)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    space: SpaceConfig
    objective: ObjectiveConfig
    # Paths of mergekit YAML recipes or inline mergekit configs; None: the seed recipe (see seed_recipe).
    recipes: list[str | dict[str, Any]] | None = None
    dpo: DPOStageConfig = DPOStageConfig()  # the DPO stage (search.stages.dpo): `merge-search dpo CONFIG`
    search: SearchConfig = SearchConfig()  # the search (search.driver.study): `merge-search search CONFIG`
    mtbench: MTBenchConfig = MTBenchConfig()  # MT-Bench-de (objectives.mtbench): `merge-search mtbench run`
    pipeline: PipelineConfig = PipelineConfig()  # `merge-search run CONFIG`: all stages in order

    @pydantic.model_validator(mode="before")
    @classmethod
    def _removed(cls, data):
        if isinstance(data, dict) and "world" in data:
            if data["world"] is None:  # as older resolved.yaml files hold it
                return {k: v for k, v in data.items() if k != "world"}
            raise ValueError("`world` was removed from the run config: build the demo world beforehand "
                             "(merge-search demo-world build, or make demo) and delete the `world:` section")
        return data

    @pydantic.model_validator(mode="after")
    def _check_sampler_fits_objective(self) -> RunConfig:
        problems = check_sampler(self.search.sampler, n_objectives=2 if self.objective.secondary else 1,
                                 constrained=bool(self.objective.constraints))
        if problems:
            raise ConfigProblems(problems)
        return self


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu`` (``cuda`` is checked where models load)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _seed_value(spec: Any) -> Any:
    if isinstance(spec, Range):
        return (spec.low + spec.high) / 2
    if isinstance(spec, Choice):
        return spec.choices[0]
    return spec


def seed_recipe(space: SpaceConfig) -> dict[str, Any]:
    """The default hand recipe as an inline mergekit config: density 0.6, weights 0.3 / 0.3 / 0.4.

    Other parameters take their fixed value from the space (searched ones: a range's midpoint, the first
    choice), so the recipe can warm-start a search of ``space``.
    """
    shared_decl, per_model_decl = method_parameters(space.merge_method)
    n = len(space.models)
    weights = list(SEED_WEIGHTS) if n == len(SEED_WEIGHTS) else [round(1 / n, 6)] * n
    models = []
    for m, w in zip(space.models, weights):
        params = {k: _seed_value(v) for k, v in m.parameters.items()}
        if "density" in per_model_decl:
            params["density"] = SEED_DENSITY
        if "weight" in per_model_decl:
            params["weight"] = w
        models.append({"model": m.model, "parameters": params})
    shared = {k: _seed_value(v) for k, v in space.parameters.items() if k in shared_decl}
    return recipe_dict(space, models, shared)


def load_run_config(path: str | Path, *, resolve: bool = True) -> RunConfig:
    """Validate the YAML at ``path`` (all problems in one :class:`UserError`).

    With ``resolve`` (default), ``device: auto`` becomes the actual device (``dpo.device: auto`` follows it)
    and a missing ``recipes`` the seed recipe when the space can express it (else none, with a warning on the
    ``merge_search`` logger); recipe paths must exist.
    """
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a run config is a YAML mapping (name, space, objective, ...), but got "
                        f"{type(data).__name__}")
    cfg = validate(RunConfig, data, str(path))
    if not resolve:
        return cfg
    missing = [r for r in cfg.recipes or [] if isinstance(r, str) and not Path(r).is_file()]
    if missing:
        raise UserError(f"{path}: recipes: file(s) {missing} do not exist: give mergekit YAML paths relative to "
                        "the working directory (or inline configs)")
    device = resolve_device(cfg.device)
    update: dict[str, Any] = {"device": device}
    if cfg.dpo.device == "auto":  # the DPO stage follows the run's device unless it names its own
        update["dpo"] = cfg.dpo.model_copy(update={"device": device})
    if cfg.recipes is None:
        update["recipes"] = _default_recipes(cfg.space, str(path))
    return cfg.model_copy(update=update)


def _default_recipes(space: SpaceConfig, source: str) -> list[dict[str, Any]]:
    """The seed recipe when the space can express it; none (and one warning saying why) otherwise."""
    recipe = seed_recipe(space)
    try:
        params_from_recipe(space, recipe)
    except UserError as err:
        LOG.warning("%s: the built-in seed recipe is not enqueued, it does not fit this space (%s); give "
                    "`recipes:` to warm-start the search", source, err)
        return []
    return [recipe]


def save_run_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write ``cfg`` (every field, defaults included) as YAML that :func:`load_run_config` reads back; a file
    that already holds exactly that text is left untouched."""
    path = Path(path)
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)
    return path
