"""One mergekit recipe as a value: its YAML text and the mergekit configuration, parsed and validated once.

A :class:`Recipe` is what flows from a trial record (:class:`~search.rundir.TrialRecord`, which carries it once
built) to :func:`~search.merge.export.remerge` and :meth:`~search.merge.engine.ResidentMerger.merge`: no step
after its construction parses the YAML or validates it against mergekit's registry again.

::

    recipe = Recipe.from_file("configs/recipes/demo-hand.yaml")   # or from_text / from_dict / from_config
    recipe.referenced_models()                                     # ["results/demo-world/models/base", ...]
    merger.merge(recipe, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from objectives.schema import format_validation_error, load_yaml, parse_yaml
from search.merge import strict
from search.merge.recipe import recipe_yaml

__all__ = ["Recipe"]


@dataclass(frozen=True, eq=False, init=False)
class Recipe:
    """A validated mergekit recipe: ``text`` (its YAML), ``config`` (mergekit's ``MergeConfiguration``) and
    ``label`` (how messages name it: a file path, ``trial 7``, ``recipe``).

    Built by :meth:`from_text` (the text kept verbatim: an export writes what the trial recorded),
    :meth:`from_file`, :meth:`from_dict` (text: mergekit's YAML of the configuration, :func:`recipe_yaml`) or
    :meth:`from_config`; :meth:`of` takes any of these. Every constructor but :meth:`from_config` checks the
    recipe as given: a YAML mapping, accepted by mergekit, and strict (:func:`search.merge.strict.recipe_problems`:
    no unknown keys, no undeclared parameters, no NaN) -- a :class:`UserError` naming ``label`` otherwise.

    Two recipes are equal when mergekit reads the same configuration from them (their canonical YAML), whatever
    their text's formatting or their label. ``config`` is shared: read it, never mutate it; mergekit's planner
    gets a copy (:meth:`merge_config`).
    """

    text: str
    label: str
    _config: Any = field(repr=False)

    def __init__(self, text: str, label: str = "recipe"):
        self._set(text, _validated(parse_yaml(text, label), label), label)

    def _set(self, text: str, config: Any, label: str) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "_config", config)

    @classmethod
    def _made(cls, text: str, config: Any, label: str) -> Recipe:
        recipe = object.__new__(cls)
        recipe._set(text, config, label)
        return recipe

    # --- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_text(cls, text: str, label: str = "recipe") -> Recipe:
        """The recipe of YAML ``text`` (kept verbatim as :attr:`text`)."""
        return cls(text, label)

    @classmethod
    def from_dict(cls, data: Any, label: str = "recipe") -> Recipe:
        """The recipe of a mapping (``merge_method``, ``models``, ...); never mutates ``data``."""
        config = _validated(data, label)
        return cls._made(recipe_yaml(config), config, label)

    @classmethod
    def from_file(cls, path: str | Path, label: str | None = None) -> Recipe:
        """The recipe in a YAML file (``label``: default the path); a missing or unreadable file, invalid YAML
        or a duplicate key is a :class:`UserError`."""
        return cls.from_dict(load_yaml(path), label or str(path))

    @classmethod
    def from_config(cls, config: Any, label: str = "recipe") -> Recipe:
        """The recipe of a ``MergeConfiguration`` built in code (e.g. :func:`~search.merge.recipe.to_merge_config`;
        copied, never mutated). mergekit validated it when it was built; the strict checks, which are about what a
        person wrote, are not run (a NaN weight sampled by a search fails the merge, as :class:`MergeError`)."""
        return cls._made(recipe_yaml(config), config.model_copy(deep=True), label)

    @classmethod
    def of(cls, recipe: Any, label: str | None = None) -> Recipe:
        """``recipe`` itself, or the recipe of a YAML file path, a mapping or a ``MergeConfiguration``."""
        from mergekit.config import MergeConfiguration

        if isinstance(recipe, Recipe):
            return recipe
        if isinstance(recipe, (str, Path)):
            return cls.from_file(recipe, label)
        if isinstance(recipe, MergeConfiguration):
            return cls.from_config(recipe, label or "recipe")
        return cls.from_dict(recipe, label or "recipe")

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def config(self) -> Any:
        """mergekit's ``MergeConfiguration`` of the recipe (shared: never mutate it, see :meth:`merge_config`)."""
        return self._config

    def merge_config(self) -> Any:
        """A fresh copy of :attr:`config` for mergekit, whose planner mutates what it is given."""
        return self._config.model_copy(deep=True)

    def dict(self) -> dict[str, Any]:
        """The recipe as a plain mapping (a fresh one, from :attr:`text`)."""
        return parse_yaml(self.text, self.label)

    def referenced_models(self) -> list[str]:
        """Every model the recipe reads (base model included), as mergekit names them."""
        return [str(m) for m in self._config.referenced_models()]

    @property
    def base_model(self) -> str | None:
        """The recipe's ``base_model`` (None when it has none)."""
        return str(self._config.base_model) if self._config.base_model else None

    def yaml(self) -> str:
        """mergekit's YAML of :attr:`config` (:func:`recipe_yaml`): the same for equal recipes."""
        return recipe_yaml(self._config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipe) and self.yaml() == other.yaml()

    def __hash__(self) -> int:
        return hash(self.yaml())


def _validated(data: Any, source: str) -> Any:
    """mergekit's ``MergeConfiguration`` of a recipe mapping, strictly checked, or a one-line :class:`UserError`."""
    import pydantic
    from mergekit.config import MergeConfiguration

    if not isinstance(data, dict):
        raise UserError(f"{source}: a mergekit recipe is a YAML mapping (merge_method, models, ...), but got "
                        f"{type(data).__name__}")
    try:
        config = MergeConfiguration.model_validate(data)
    except pydantic.ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None
    except RuntimeError as err:  # mergekit's own validators raise these: "Cannot specify both ...", ...
        raise UserError(f"{source}: mergekit refuses the recipe: {err}: fix the recipe (e.g. give only one of "
                        "tokenizer_source and tokenizer; either models or slices)") from None
    problems = strict.recipe_problems(data)
    if problems:
        raise UserError(f"{source}: {len(problems)} recipe error(s): " + "; ".join(problems))
    return config
