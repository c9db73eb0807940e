"""What every world kind writes, and where: the recipe, the skills and splits, the lm-eval task YAMLs, the task
data, preference pairs and questions, and the manifest's relative paths.

Layout of a world (all paths in ``world.json`` are relative to the world folder)::

    WORLD/world.json                      manifest, written last (its presence marks a complete world)
    WORLD/models/{base,zahlen,artikel,verben}/   self-contained HF model folders (safetensors + tokenizer)
    WORLD/tokenizer/                      the shared tokenizer
    WORLD/tasks/*.yaml, tasks/data/*.jsonl   lm-eval tasks demo_<skill>_<split>, split in {search, test}
                                          (multiple choice) and demo_<skill>_gen_<split> (the same items,
                                          the answer generated greedily, exact match)
    WORLD/preferences/{train,test}.jsonl  German preference pairs (system, question, chosen, rejected)
    WORLD/mtbench/question.jsonl          MT-Bench-style two-turn questions (FastChat layout): the final test
    WORLD/mtbench/search_question.jsonl   the same kind of questions made from *search* items, for a search's
                                          chat objective (no question shared with question.jsonl)

The kinds' builders (:mod:`demoworld.demo`, :mod:`demoworld.seedlike`) write the models, tokenizers and manifest;
:mod:`demoworld.build` dispatches on the kind and reads the manifest back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from demoworld import text as T
from demoworld.chat import mtbench_questions, search_questions

__all__ = ["EVAL_SPLITS", "PLAIN_PROMPT", "SKILLS", "Recipe", "gen_task_name", "manifest_paths", "task_name",
           "task_yaml", "write_data", "write_task_yamls"]

SKILLS = T.SKILLS
EVAL_SPLITS = ("search", "test")
PLAIN_PROMPT = "Frage: {{text}}\nAntwort:"  # the seedlike world's tasks: plain text, as German lm-eval tasks


@dataclass(frozen=True)
class Recipe:
    """How the world is trained; fixed so that a seed fully determines the world."""

    base_steps: int = 600
    base_lr: float = 3e-3
    expert_steps: int = 250
    expert_lr: float = 5e-4
    generic_docs: int = 20000
    chat_docs: int = 2000
    n_eval: int = 200
    pref_train: int = 400
    pref_test: int = 100


def task_name(skill: str, split: str) -> str:
    return f"demo_{skill}_{split}"


def gen_task_name(skill: str, split: str) -> str:
    """The generative task of a skill split (same items as :func:`task_name`'s, the answer generated)."""
    return f"demo_{skill}_gen_{split}"


# Stops and length of a generated answer: the longest closed answer ("Am größten ist siebzehn.") is 24 characters
# of the character tokenizer; the turn ends at the template's end of turn (ChatML) or the line (plain text).
GEN_MAX_TOKENS = 40


def gen_task_yaml(name: str, data_file: Path, kind: str = "demo") -> dict:
    """The generative lm-eval task of one skill split: the same question as :func:`task_yaml`, answered by greedy
    generation until the end of the turn, scored 1 when the answer is exactly the right option (surrounding
    whitespace ignored)."""
    until = ["\n"] if kind == "seedlike" else ["<|im_end|>"]
    mc = task_yaml(name, data_file, kind)
    return {
        **{k: mc[k] for k in ("task", "dataset_path", "dataset_kwargs", "test_split", "doc_to_text")},
        "output_type": "generate_until",
        "doc_to_target": "{{choices[gold]}}",
        "generation_kwargs": {"until": until, "do_sample": False, "max_gen_toks": GEN_MAX_TOKENS},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "regexes_to_ignore": ["^\\s+", "\\s+$"]}],
        "metadata": {"version": 1.0},
    }


def task_yaml(name: str, data_file: Path, kind: str = "demo") -> dict:
    """The lm-eval task of one skill split. ``demo``: each question as a ChatML user turn, the options as the
    assistant's answer (the demo world's own template, written into the task so every consumer asks the same
    way). ``seedlike``: plain text without any chat template, ``Frage: ...\nAntwort:`` + ``" "`` + option."""
    if kind == "seedlike":
        return {**task_yaml(name, data_file), "doc_to_text": PLAIN_PROMPT, "target_delimiter": " "}
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "<|im_start|>user\n{{text}}<|im_end|>\n<|im_start|>assistant\n",
        "target_delimiter": "",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def write_task_yamls(tasks_dir: Path, data_dir: Path, kind: str = "demo") -> None:
    """(Re)write the task YAMLs in ``tasks_dir`` with absolute paths into ``data_dir`` (lm-eval needs
    absolute ``data_files``); a YAML already right is left untouched."""
    for skill in SKILLS:
        for split in EVAL_SPLITS:
            data = data_dir.absolute() / f"{skill}_{split}.jsonl"
            for name, make in ((task_name(skill, split), task_yaml), (gen_task_name(skill, split), gen_task_yaml)):
                target = tasks_dir / f"{name}.yaml"
                content = yaml.safe_dump(make(name, data, kind), sort_keys=False, allow_unicode=True)
                if not target.is_file() or target.read_text(encoding="utf-8") != content:
                    target.write_text(content, encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_data(tmp: Path, seed: int, r: Recipe) -> dict:
    """Task data, preference pairs and questions of a world (the same for every kind); returns the skill items."""
    items = T.skill_items(seed, r.n_eval)
    # lm-eval task data (search and test splits; train items are only used for fine-tuning)
    for skill in SKILLS:
        for split in EVAL_SPLITS:
            _write_jsonl(tmp / "tasks" / "data" / f"{skill}_{split}.jsonl", [it.as_row() for it in items[skill][split]])
    prefs = T.preference_rows(seed, r.pref_train + r.pref_test, {s: items[s]["train"] for s in SKILLS})
    _write_jsonl(tmp / "preferences" / "train.jsonl", prefs[: r.pref_train])
    _write_jsonl(tmp / "preferences" / "test.jsonl", prefs[r.pref_train:])
    final = mtbench_questions({s: items[s]["test"] for s in SKILLS}, seed)
    _write_jsonl(tmp / "mtbench" / "question.jsonl", final)
    _write_jsonl(tmp / "mtbench" / "search_question.jsonl",
                 search_questions({s: items[s]["search"] for s in SKILLS}, seed, final))
    return items


def manifest_paths() -> dict:
    """The manifest entries every kind shares: relative paths of models, tokenizer, tasks and data."""
    return {
        "base": "models/base",
        "experts": {s: f"models/{s}" for s in SKILLS},
        "tokenizer": "tokenizer",
        "tasks": {
            "include_path": "tasks",
            **{split: {s: task_name(s, split) for s in SKILLS} for split in EVAL_SPLITS},
            "generative": {split: {s: gen_task_name(s, split) for s in SKILLS} for split in EVAL_SPLITS},
        },
        "preferences": {"train": "preferences/train.jsonl", "test": "preferences/test.jsonl"},
        "mtbench_questions": "mtbench/question.jsonl",
        "chat_questions": "mtbench/search_question.jsonl",
    }
