"""Build or load an offline world: tokenizer, base, three experts, lm-eval tasks, preference data, questions.

Two kinds share one layout and manifest (:mod:`demoworld.layout`): ``demo`` (:mod:`demoworld.demo`; no ``kind``
key in its manifest) and ``seedlike`` (:mod:`demoworld.seedlike`: per-model tokenizers, chat templates and file
formats as in the seed merge, plain-text tasks; ``"kind": "seedlike"`` and a ``models`` section in its
manifest). This module picks the kind's builder and reads a manifest back.

A world is built in a hidden sibling folder and renamed into place when complete, so an interrupted build
never leaves a half world behind and never touches an existing folder's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from demoworld import demo, seedlike
from demoworld.layout import EVAL_SPLITS, write_task_yamls
from objectives.errors import UserError

__all__ = ["KINDS", "World", "build_lock", "build_world", "builder_version", "load_manifest"]

# kind -> (builder, builder version); the builder writes a complete world into a folder, see build_world
_BUILDERS = {
    "demo": (demo.build_demo_into, demo.BUILDER_VERSION),
    "seedlike": (seedlike.build_seedlike_into, seedlike.SEEDLIKE_BUILDER_VERSION),
}
KINDS = tuple(_BUILDERS)


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
    gen_tasks: dict[str, dict[str, str]] = field(default_factory=dict)  # split -> skill -> generative task name
    chat_questions: Path | None = None  # questions for a search's chat objective (none shared with mtbench_questions)


def builder_version(kind: str) -> int:
    """The builder version of a world kind (:data:`demoworld.demo.BUILDER_VERSION` for the demo world)."""
    return _BUILDERS[kind][1]


def load_manifest(root: str | Path) -> World:
    """Read ``root/world.json``; a folder that is not a complete world is a :class:`UserError`."""
    root = Path(root)
    man = root / "world.json"
    if not man.is_file():
        raise UserError(
            f"{str(root)!r} is not a demo world (no world.json): build one there first "
            "(merge-search demo-world build)"
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
            gen_tasks={split: dict(v) for split, v in m["tasks"].get("generative", {}).items()},
            chat_questions=root.resolve() / m["chat_questions"] if m.get("chat_questions") else None,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{man}: malformed world manifest ({err!r}): rebuild the world into a new folder") from None
    write_task_yamls(world.include_path, world.include_path / "data", world.kind)  # keeps the absolute data paths right if the world was moved
    return world


def _check_out(out: Path, seed: int, kind: str = "demo") -> bool:
    """True when ``out`` already holds a complete world of this kind and seed; raises on unusable targets."""
    if out.exists() and not out.is_dir():
        raise UserError(f"world folder {str(out)!r} is a file: give a new or empty folder for the demo world")
    if (out / "world.json").is_file():
        m = json.loads((out / "world.json").read_text(encoding="utf-8"))
        have, version = m.get("kind", "demo"), builder_version(kind)
        if m.get("seed") != seed or m.get("builder_version") != version or have != kind:
            raise UserError(
                f"world folder {str(out)!r} holds a {have} world built with seed {m.get('seed')} (builder "
                f"v{m.get('builder_version')}), not a {kind} world of seed {seed} (v{version}): choose another folder, "
                "or delete this one to rebuild it (make clean-world removes the project's worlds)"
            )
        return True
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"world folder {str(out)!r} is a non-empty folder without world.json: choose a new or empty folder")
    return False


def build_world(out: str | Path, seed: int = 0, *, quiet: bool = False, threads: int | None = None,
                kind: str = "demo") -> World:
    """Build a world of ``kind`` (:data:`KINDS`) into ``out`` (a quick no-op if a complete world of this kind and
    seed is there). ``threads``: torch CPU threads while training (default min(4, CPU cores)); the weights
    depend on it. Concurrent builds of one folder (two test workers, two terminals) take turns: the second
    waits for the first and then loads its world."""
    if kind not in KINDS:
        raise UserError(f"unknown world kind {kind!r}: choose one of {', '.join(KINDS)}")
    out = Path(out).absolute()
    if _check_out(out, seed, kind):
        return load_manifest(out)
    with build_lock(out, quiet):
        if _check_out(out, seed, kind):  # another process built it while this one waited
            return load_manifest(out)
        _build(out, seed, quiet=quiet, threads=threads, kind=kind)
    return load_manifest(out)


@contextlib.contextmanager
def build_lock(out: Path, quiet: bool) -> Iterator[None]:
    """An exclusive lock on a hidden file beside ``out`` (released by the kernel if the holder dies)."""
    lock = out.parent / f".{out.name}.build.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(
            f"world folder {str(out)!r}: its parent folder is not writable ({err.strerror}): choose a folder you "
            "can write to"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"waiting for another build of {out} to finish", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(out: Path, seed: int, *, quiet: bool, threads: int | None, kind: str) -> None:
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as err:
        raise UserError(
            f"world folder {str(out)!r} is not writable ({err.strerror}): choose a folder you can write to"
        ) from None
    try:
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        build_into, _ = _BUILDERS[kind]
        build_into(tmp, out, seed, quiet=quiet, threads=threads)
        try:
            if out.is_dir():
                out.rmdir()  # empty (checked above)
            tmp.rename(out)
        except OSError:
            if not _check_out(out, seed, kind):  # not another build of the same world finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
