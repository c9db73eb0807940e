"""The ``objective:`` config section: which lm-eval tasks score a candidate, on which fixed documents.

Every field is a YAML key (the pydantic model IS the format)::

    objective:
      include_paths: [my_tasks/]          # custom lm-eval task YAMLs (besides lm-eval's built-in tasks)
      tasks:
        - {name: arc_de, metric: acc_norm, weight: 1.0, num_fewshot: 0, subset: 300, heldout: 300}
        - {name: demo_zahlen_search, test_task: demo_zahlen_test, subset: all}
      subset_seed: 0                       # the only randomness of the subsets
      rungs: [50, 200, all]                # multi-fidelity: items per task evaluated at each rung
      aggregate: weighted_mean             # | min | expert_relative (needs `reference`)
      batch_size: 32
      threads: 1                           # torch CPU threads while scoring on CPU (null: torch's default)
      selection: random                    # | informative: items the source models disagree on first
      estimate: false                      # pruner sees the full-subset estimate (needs informative)
      secondary: {name: english, tasks: [{name: arc_easy, subset: 250}]}
      constraints: [{objective: english, min: 0.7}]
      chat:                                # generated two-turn answers rated by a judge (objectives/chat.py)
        questions: data/chat/search_questions.jsonl   # MT-Bench format; none shared with mtbench.questions
        rungs: [8, 16, 32]                 # questions at each rung of `rungs` (nested prefixes)
        weight: 1.0                        # weight of (rating - 1) / 9 in the primary fitness
        judge: {backend: openai, base_url: https://api.openai.com/v1, model: gpt-4}
        max_judge_calls: 20000             # required for a paid judge (backend openai)

Held-out documents come either from the same task (``heldout: N`` documents disjoint from the search subset)
or from a separate task (``test_task``; ``heldout`` then counts its documents, default all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pydantic
from pydantic import Field

from objectives.mtbench.config import JudgeConfig
from objectives.schema import ConfigProblems, Strict, refused_key

__all__ = ["CHAT", "ChatConfig", "Constraint", "ObjectiveConfig", "ScoreSpec", "SecondaryObjective", "Size", "TaskSpec"]

Size = int | Literal["all"]
CHAT = "chat"  # the chat objective's name among the task scores (RungResult.tasks, constraints, reference)


class TaskSpec(Strict):
    """One lm-eval task of an objective."""

    name: str
    # lm-eval metric key ``metric,filter``; a bare ``acc_norm`` means ``acc_norm,none``.
    metric: str = "acc,none"
    weight: float = Field(default=1.0, gt=0)
    # None keeps the task's own default (0 when the task defines none).
    num_fewshot: int | None = Field(default=None, ge=0)
    # Search subset: N documents chosen once from ``subset_seed`` (``all`` = every document).
    subset: Size = 250
    # Held-out documents: disjoint from the search subset of ``name``, or taken from ``test_task``.
    heldout: Size | None = None
    test_task: str | None = None

    @pydantic.field_validator("metric")
    @classmethod
    def _full_key(cls, v: str) -> str:
        return v if "," in v else f"{v},none"

    @pydantic.field_validator("subset", "heldout")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a subset size must be >= 1 or 'all', but got {v}")
        return v

    @pydantic.model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.test_task == self.name:
            raise ValueError(f"test_task must differ from name ({self.name!r}): use `heldout: N` for a "
                             "held-out subset of the same task")
        if self.test_task is None and self.subset == "all" and self.heldout is not None:
            raise ValueError("`subset: all` leaves no documents for `heldout`: give subset a number or set "
                             "`test_task`")
        return self

    @property
    def has_heldout(self) -> bool:
        return self.test_task is not None or self.heldout is not None


class ScoreSpec(Strict):
    """Tasks and how their metrics combine into one number (the fitness)."""

    tasks: list[TaskSpec] = Field(min_length=1)
    # weighted_mean: sum(w * s) / sum(w); min: the worst task; expert_relative: weighted mean of
    # s / reference[task] (1.0 = as good as the reference, e.g. the best expert, on every task).
    aggregate: Literal["weighted_mean", "min", "expert_relative"] = "weighted_mean"
    reference: dict[str, float] | None = None

    @pydantic.model_validator(mode="after")
    def _check(self) -> ScoreSpec:
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"each task must appear once per objective, but {dup} appear more often")
        if self.aggregate == "expert_relative":
            missing = [n for n in names if not (self.reference or {}).get(n)]
            if missing:
                raise ValueError(f"aggregate expert_relative needs a non-zero `reference` score for every task, "
                                 f"but {missing} have none: add `reference: {{task: score}}` (e.g. the best "
                                 "expert's score from `merge-search evaluate`)")
        return self


class SecondaryObjective(ScoreSpec):
    """An optional second objective (e.g. English retention) for multi-objective search."""

    name: str = "secondary"


class Constraint(Strict):
    """A bound on an objective (``primary``, the secondary's name) or on one task's score."""

    objective: str
    min: float | None = None
    max: float | None = None

    @pydantic.model_validator(mode="after")
    def _check(self) -> Constraint:
        if self.min is None and self.max is None:
            raise ValueError(f"constraint on {self.objective!r} needs `min` and/or `max`")
        if self.min is not None and self.max is not None and not self.min <= self.max:
            raise ValueError(f"`min <= max` must hold, but got (min={self.min}, max={self.max})")
        return self


class ChatConfig(Strict):
    """``objective.chat``: two-turn questions answered by the candidate (in its chat template) and rated 1-10 by
    a judge; the mean rating, as ``(rating - 1) / 9`` in 0..1, is a weighted component of the primary fitness."""

    questions: str = Field(description=(
        "question file of the search (MT-Bench format: FastChat .jsonl or FastEval .json); it must share no "
        "question (no turn text) with mtbench.questions, the final measurement"))
    test_questions: str | None = Field(default=None, description=(
        "questions of the held-out split (the held-out stage, `evaluate`), none shared with `questions`; null: the "
        "held-out split has no chat component"))
    rungs: list[Size] | None = Field(default=None, description=(
        "questions answered at each rung of objective.rungs (one entry per rung, growing, nested prefixes of the "
        "file; `all` = every question); null: every question at the first rung"))
    weight: float = Field(default=1.0, gt=0, description=(
        "weight of the chat score (mean rating mapped to 0..1 by (rating - 1) / 9) next to the tasks' weights in "
        "objective.aggregate"))
    max_judge_calls: int | None = Field(default=None, ge=1, description=(
        "most judge calls (one per question turn not in the judgement cache); required for a paid judge "
        "(judge.backend openai); a search that has spent it stops"))
    max_new_tokens: int = Field(default=1024, ge=1, description="tokens per answer turn at most")
    batch_size: int = Field(default=8, ge=1, description="questions answered at once")
    temperatures: dict[str, float] = Field(default={}, description=(
        "sampling temperature per question category; 0 = greedy"))
    default_temperature: float = Field(default=0.0, ge=0.0, description=(
        "temperature of the categories not in `temperatures` (greedy by default: a fitness should not be noisy)"))
    system_prompt: str | None = None
    chat_template: str | None = Field(default=None, description=(
        "template for a candidate whose tokenizer has none: `chatml`, a Jinja template or a .jinja file; null or "
        "`model` = none (a candidate with its own template is always asked in it)"))
    seed: int = 0  # torch seed of sampled answers (categories with a temperature above 0)
    language: Literal["de", "en"] = "de"  # language of the built-in judge prompts (judge.prompts replaces them)
    judge: JudgeConfig = JudgeConfig()

    @pydantic.model_validator(mode="after")
    def _check(self) -> ChatConfig:
        problems = []
        if self.judge.backend == "openai" and self.max_judge_calls is None:
            problems.append("max_judge_calls is required with judge.backend 'openai' (a paid judge) but is not "
                            "set: set objective.chat.max_judge_calls to the most judge calls the search may make "
                            "(at most 2 per question and candidate; judgements of an answer given before are cached)")
        if self.rungs is not None:
            ints = [s for s in self.rungs if s != "all"]
            if not self.rungs or any(s < 1 for s in ints) or ints != sorted(set(ints)) or \
                    ("all" in self.rungs and self.rungs.index("all") != len(self.rungs) - 1):
                problems.append(f"rungs: must be >= 1, growing strictly, with 'all' (if any) last, but got "
                                f"{self.rungs}: e.g. [8, 16, all]")
        if problems:
            raise ConfigProblems(problems)
        return self


class ObjectiveConfig(ScoreSpec):
    """The ``objective:`` section."""

    include_paths: list[Path] = []
    # Also index lm-eval's built-in tasks (about 5 s); off for configs that only use custom tasks.
    include_defaults: bool = True
    subset_seed: int = 0
    rungs: list[Size] = Field(default=["all"], description=(
        "items per task at each rung (fidelity level) of successive halving, growing, capped at each task's subset; "
        "the last should be `all` (formerly `stages`)"))
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    batch_size: int = Field(default=32, ge=1)
    threads: int | None = Field(default=1, ge=1, description=(
        "torch CPU threads while the held-out stage, `evaluate` and the DPO stage of `run` score on CPU (restored "
        "afterwards); null: torch's default. Search workers keep Ray's pinning (search.worker_cpus threads)"))
    # lm-eval bootstrap iterations for stderr of non-mean metrics (mean metrics use the closed form).
    bootstrap_iters: int = Field(default=100, ge=0)
    selection: Literal["random", "informative"] = Field(default="random", description=(
        "order of each task's search subset: `random` (seeded by subset_seed) or `informative` (items the "
        "source models disagree on first, stratified; the sources are scored once before the search, kept in "
        "RUN/item_matrix.json; every rung then records a full-subset estimate). See docs/objectives.md"))
    estimate: bool = Field(default=False, description=(
        "let the pruner see each rung's full-subset estimate instead of the raw rung score (needs selection: "
        "informative); a trial's final value is always the plain score on the whole search subset"))
    secondary: SecondaryObjective | None = None
    constraints: list[Constraint] = []
    chat: ChatConfig | None = Field(default=None, description=(
        "the chat objective: generated answers rated by a judge, a weighted part of the primary fitness "
        "(docs/objectives.md)"))

    _renamed = refused_key("stages", "`stages` was renamed to `rungs` (objective.rungs: items per task at each rung "
                                     "of successive halving; same values): rename the key")

    @pydantic.model_validator(mode="after")
    def _check_objective(self) -> ObjectiveConfig:
        problems = []
        ints = [s for s in self.rungs if s != "all"]
        if any(s < 1 for s in ints):
            problems.append(f"rungs: every rung must be >= 1 or 'all', but got {self.rungs}")
        if ints != sorted(set(ints)) or ("all" in self.rungs and self.rungs[-1] != "all") \
                or self.rungs.count("all") > 1:
            problems.append(f"rungs: must grow strictly with 'all' (if any) last, but got {self.rungs}")
        if not self.rungs:
            problems.append("rungs: give at least one rung, e.g. [all]")
        if self.estimate and self.selection != "informative":
            problems.append("estimate: true needs selection: informative (the estimate comes from the sources' "
                            "item matrix)")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            problems.append("fewshot_as_multiturn: true needs apply_chat_template: true")
        names = [t.name for t in self.all_tasks()]
        both = sorted({n for n in names if names.count(n) > 1})
        if both:
            problems.append(f"tasks {both} appear in both the primary and the secondary objective: a task "
                            "belongs to one objective")
        known = {"primary", *(t.name for t in self.tasks)} | ({CHAT} if self.chat else set())
        if self.secondary:
            known |= {self.secondary.name, *(t.name for t in self.secondary.tasks)}
        if self.chat:
            problems += self._chat_problems(names)
        for i, c in enumerate(self.constraints):
            if c.objective not in known:
                problems.append(f"constraints[{i}].objective: {c.objective!r} is neither 'primary', the "
                                f"secondary objective's name nor a task; known: {sorted(known)}")
        if problems:
            raise ConfigProblems(problems)
        return self

    def _chat_problems(self, names: list[str]) -> list[str]:
        """What ``chat`` must agree on with the rest of the objective."""
        chat, out = self.chat, []
        if chat.rungs is not None and len(chat.rungs) != len(self.rungs):
            out.append(f"chat.rungs: one entry per rung of objective.rungs ({len(self.rungs)}: {self.rungs}) is "
                       f"needed, but got {len(chat.rungs)} ({chat.rungs}): rung i answers chat.rungs[i] questions")
        if CHAT in names:
            out.append(f"a task named {CHAT!r} clashes with the chat objective's score of that name: rename the task "
                       "(an lm-eval task YAML of your own)")
        if self.aggregate == "expert_relative" and not (self.reference or {}).get(CHAT):
            out.append(f"aggregate expert_relative with objective.chat needs reference.{CHAT} (the best expert's chat "
                       "score, (rating - 1) / 9), but it is missing or 0: add it to objective.reference")
        return out

    def all_tasks(self) -> list[TaskSpec]:
        """Primary then secondary task specs."""
        return list(self.tasks) + (list(self.secondary.tasks) if self.secondary else [])
