"""Build the offline demo world: tokenizer, base, three experts, lm-eval tasks, preference data, questions.

Layout of a world (all paths in ``world.json`` are relative to the world folder)::

    WORLD/world.json                      manifest, written last (its presence marks a complete world)
    WORLD/models/{base,zahlen,artikel,verben}/   self-contained HF model folders (safetensors + tokenizer)
    WORLD/tokenizer/                      the shared tokenizer
    WORLD/tasks/*.yaml, tasks/data/*.jsonl   lm-eval tasks demo_<skill>_<split>, split in {search, test}
    WORLD/preferences/{train,test}.jsonl  German preference pairs (system, question, chosen, rejected)
    WORLD/mtbench/question.jsonl          MT-Bench-style two-turn questions (FastChat layout)

A world is built in a hidden sibling folder and renamed into place when complete, so an interrupted build
never leaves a half world behind and never touches an existing folder's files.

Two kinds share this layout and manifest: ``demo`` (built here; no ``kind`` key in its manifest) and
``seedlike`` (:mod:`demoworld.seedlike`: per-model tokenizers, chat templates and file formats as in the
seed merge, plain-text tasks; ``"kind": "seedlike"`` and a ``models`` section in its manifest).
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from demoworld import text as T
from demoworld.chat import mtbench_questions, skill_chat_docs
from demoworld.tokenizer import build_tokenizer
from demoworld.train import model_config, new_model, train_lm
from objectives.errors import UserError

__all__ = ["BUILDER_VERSION", "KINDS", "PLAIN_PROMPT", "SKILLS", "World", "build_world", "builder_version",
           "load_manifest", "task_yaml"]

BUILDER_VERSION = 2  # 2: the skills asked as chat questions with closed answers (tasks, training, MT-Bench)
SKILLS = T.SKILLS
EVAL_SPLITS = ("search", "test")
KINDS = ("demo", "seedlike")
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


@dataclass(frozen=True)
class World:
    """A loaded manifest with absolute paths."""

    root: Path
    seed: int
    base: Path
    experts: dict[str, Path]
    tokenizer: Path
    include_path: Path
    tasks: dict[str, dict[str, str]]  # split -> skill -> task name
    preferences: dict[str, Path]
    mtbench_questions: Path
    kind: str = "demo"
    models: dict[str, dict] = field(default_factory=dict)  # seedlike: per-model tokenizer/template/format facts


def builder_version(kind: str) -> int:
    """The builder version of a world kind (the demo world's is :data:`BUILDER_VERSION`)."""
    if kind == "seedlike":
        from demoworld.seedlike import SEEDLIKE_BUILDER_VERSION

        return SEEDLIKE_BUILDER_VERSION
    return BUILDER_VERSION


def task_name(skill: str, split: str) -> str:
    return f"demo_{skill}_{split}"


def load_manifest(root: str | Path) -> World:
    """Read ``root/world.json``; a folder that is not a complete world is a :class:`UserError`."""
    root = Path(root)
    man = root / "world.json"
    if not man.is_file():
        raise UserError(
            f"{str(root)!r} is not a demo world (no world.json): build one with "
            f"`merge-search demo-world build --out {root}`"
        )
    try:
        m = json.loads(man.read_text(encoding="utf-8"))
        kind = m.get("kind", "demo")  # worlds built before the seedlike kind have no key
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        world = World(
            root=root.resolve(),
            seed=int(m["seed"]),
            base=root.resolve() / m["base"],
            experts={k: root.resolve() / v for k, v in m["experts"].items()},
            tokenizer=root.resolve() / m["tokenizer"],
            include_path=root.resolve() / m["tasks"]["include_path"],
            tasks={split: dict(m["tasks"][split]) for split in EVAL_SPLITS},
            preferences={k: root.resolve() / v for k, v in m["preferences"].items()},
            mtbench_questions=root.resolve() / m["mtbench_questions"],
            kind=kind,
            models=dict(m.get("models", {})),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{man}: malformed world manifest ({err!r}): rebuild the world into a new folder") from None
    _write_task_yamls(world.include_path, world.include_path / "data", world.kind)  # keeps the absolute data paths right if the world was moved
    return world


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


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


def _write_task_yamls(tasks_dir: Path, data_dir: Path, kind: str = "demo") -> None:
    """(Re)write the task YAMLs in ``tasks_dir`` with absolute paths into ``data_dir`` (lm-eval needs
    absolute ``data_files``); a YAML already right is left untouched."""
    for skill in SKILLS:
        for split in EVAL_SPLITS:
            name = task_name(skill, split)
            data = data_dir.absolute() / f"{skill}_{split}.jsonl"
            target = tasks_dir / f"{name}.yaml"
            content = yaml.safe_dump(task_yaml(name, data, kind), sort_keys=False, allow_unicode=True)
            if not target.is_file() or target.read_text(encoding="utf-8") != content:
                target.write_text(content, encoding="utf-8")


def _save_model(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _check_out(out: Path, seed: int, kind: str = "demo") -> bool:
    """True when ``out`` already holds a complete world of this kind and seed; raises on unusable targets."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file: give a new or empty folder for the demo world")
    if (out / "world.json").is_file():
        m = json.loads((out / "world.json").read_text(encoding="utf-8"))
        have, version = m.get("kind", "demo"), builder_version(kind)
        if m.get("seed") != seed or m.get("builder_version") != version or have != kind:
            raise UserError(
                f"--out {str(out)!r} holds a {have} world built with seed {m.get('seed')} (builder "
                f"v{m.get('builder_version')}), not a {kind} world of seed {seed} (v{version}): choose another --out"
            )
        return True
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is a non-empty folder without world.json: choose a new or empty folder")
    return False


def build_world(out: str | Path, seed: int = 0, *, quiet: bool = False, threads: int | None = None,
                kind: str = "demo") -> World:
    """Build a world of ``kind`` (:data:`KINDS`) into ``out`` (a quick no-op if a complete world of this kind and
    seed is there). ``threads``: torch CPU threads while training (default min(4, CPU cores)); the weights
    depend on it."""
    if kind not in KINDS:
        raise UserError(f"unknown world kind {kind!r}: choose one of {', '.join(KINDS)}")
    out = Path(out).absolute()
    if _check_out(out, seed, kind):
        return load_manifest(out)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as err:
        raise UserError(
            f"--out {str(out)!r} is not writable ({err.strerror}): choose a folder you can write to"
        ) from None
    try:
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        if kind == "seedlike":
            from demoworld.seedlike import build_seedlike_into

            build_seedlike_into(tmp, out, seed, quiet=quiet, threads=threads)
        else:
            _build_into(tmp, out, seed, Recipe(), quiet, threads)
        try:
            if out.is_dir():
                out.rmdir()  # empty (checked above)
            tmp.rename(out)
        except OSError:
            if not _check_out(out, seed, kind):  # not another build of the same world finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_manifest(out)


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)


def _train(model, tok, docs, *, steps, lr, seed, warmup, desc, quiet):
    bar = tqdm(total=steps, desc=desc, disable=quiet, leave=False, mininterval=1.0)

    def tick(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    losses = train_lm(model, tok, docs, steps=steps, lr=lr, seed=seed, warmup=warmup, progress=tick)
    bar.close()
    return losses


def _write_data(tmp: Path, seed: int, r: Recipe) -> dict:
    """Task data, preference pairs and questions of a world (the same for every kind); returns the skill items."""
    items = T.skill_items(seed, r.n_eval)
    # lm-eval task data (search and test splits; train items are only used for fine-tuning)
    for skill in SKILLS:
        for split in EVAL_SPLITS:
            _write_jsonl(tmp / "tasks" / "data" / f"{skill}_{split}.jsonl", [it.as_row() for it in items[skill][split]])
    prefs = T.preference_rows(seed, r.pref_train + r.pref_test)
    _write_jsonl(tmp / "preferences" / "train.jsonl", prefs[: r.pref_train])
    _write_jsonl(tmp / "preferences" / "test.jsonl", prefs[r.pref_train:])
    _write_jsonl(tmp / "mtbench" / "question.jsonl", mtbench_questions({s: items[s]["test"] for s in SKILLS}, seed))
    return items


def _manifest_paths() -> dict:
    """The manifest entries every kind shares: relative paths of models, tokenizer, tasks and data."""
    return {
        "base": "models/base",
        "experts": {s: f"models/{s}" for s in SKILLS},
        "tokenizer": "tokenizer",
        "tasks": {
            "include_path": "tasks",
            **{split: {s: task_name(s, split) for s in SKILLS} for split in EVAL_SPLITS},
        },
        "preferences": {"train": "preferences/train.jsonl", "test": "preferences/test.jsonl"},
        "mtbench_questions": "mtbench/question.jsonl",
    }


def _build_into(tmp: Path, final: Path, seed: int, r: Recipe, quiet: bool, threads: int) -> None:
    t0 = time.time()
    torch.set_num_threads(threads)
    tok = build_tokenizer()
    tok.save_pretrained(tmp / "tokenizer")
    items = _write_data(tmp, seed, r)

    # Base: generic German text, chat turns, and the three task formats with *random* answers, so the base
    # knows what the questions look like but not how to answer them. Experts then only learn the rule,
    # which keeps their task vectors small and merge-friendly.
    rng = random.Random(f"{seed}-pretrain")
    generic = T.generic_docs(seed, r.generic_docs) + T.chat_docs(seed, r.chat_docs)
    formats = [d for s in SKILLS for d in skill_chat_docs(items[s]["train"], rng, correct=False)]
    base = new_model(model_config(tok), seed)
    _say(quiet, f"demo world: pretraining base ({sum(p.numel() for p in base.parameters()):,} parameters)")
    _train(base, tok, generic + formats, steps=r.base_steps, lr=r.base_lr, seed=seed, warmup=30,
           desc="base", quiet=quiet)
    _save_model(base, tok, tmp / "models" / "base")

    for i, skill in enumerate(SKILLS):
        # Half skill examples (correct answers), half generic text: keeps the task vectors merge-friendly.
        skill_docs = skill_chat_docs(items[skill]["train"], random.Random(f"{seed}-{skill}-chat"), correct=True)
        mix = skill_docs + random.Random(f"{seed}-{skill}-mix").sample(generic, len(skill_docs))
        expert = copy.deepcopy(base)
        _say(quiet, f"demo world: fine-tuning expert '{skill}'")
        _train(expert, tok, mix, steps=r.expert_steps, lr=r.expert_lr, seed=seed + 1 + i, warmup=10,
               desc=skill, quiet=quiet)
        _save_model(expert, tok, tmp / "models" / skill)

    _write_task_yamls(tmp / "tasks", final / "tasks" / "data")
    manifest = {
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        **_manifest_paths(),
        "recipe": r.__dict__,
        "build_seconds": round(time.time() - t0, 1),
    }
    (tmp / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _say(quiet, f"demo world: built in {time.time() - t0:.0f} s")
