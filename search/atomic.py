"""Writes that are all or nothing: a file, a pair of files, a whole output folder.

The rule every stage follows (docs/checks.md, "Transactions"): check the inputs, write the new result *beside*
the old one (a hidden staging name in the same folder, so the final step is a rename on one filesystem), and
swap it in only when it is complete. A stage that fails or is killed leaves the earlier result in place; what
it leaves behind is a staging file or folder that the next attempt removes.

- :func:`write_text` / :func:`write_json`: a file replaced in one ``os.replace``.
- :func:`staging` + :func:`swap_in`: a folder built under ``.NAME.staging`` and swapped for ``NAME`` (the old
  one is renamed to ``.NAME.old`` first and removed after); :func:`recover` (called by :func:`staging`) puts an
  ``.old`` folder back when a kill fell between the two renames.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["build", "old_name", "recover", "staging", "staging_name", "swap_in", "write_json", "write_text"]


def _hidden(target: Path, suffix: str) -> Path:
    return target.parent / f".{target.name}.{suffix}"


def staging_name(target: str | Path) -> Path:
    """Where the new ``target`` is built: ``.NAME.staging`` beside it."""
    return _hidden(Path(target), "staging")


def old_name(target: str | Path) -> Path:
    """Where the old ``target`` waits while the new one is renamed in: ``.NAME.old`` beside it."""
    return _hidden(Path(target), "old")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and one ``os.replace``: a reader (or a
    later run after a kill) sees the old file or the new one, never a part. Temporary files a killed writer left
    for ``path`` are removed first."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed writer (one writer
        stale.unlink(missing_ok=True)  # per folder holds the lock, so none is in use)
    tmp = _hidden(path, f"{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any, *, indent: int = 1) -> None:
    """:func:`write_text` of ``data`` as JSON (one trailing newline)."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def recover(target: str | Path) -> None:
    """Undo what a kill during :func:`swap_in` left: an ``.old`` folder without ``target`` is renamed back; an
    ``.old`` beside a complete ``target`` is removed."""
    target = Path(target)
    old = old_name(target)
    if old.exists():
        if target.exists():
            _remove(old)
        else:
            os.replace(old, target)


def staging(target: str | Path) -> Path:
    """A fresh, empty staging folder for a new ``target`` (an earlier attempt's staging folder is removed;
    :func:`recover` runs first). The old ``target`` is not touched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    stage = staging_name(target)
    _remove(stage)
    stage.mkdir()
    return stage


def swap_in(stage: str | Path, target: str | Path) -> None:
    """Make the complete folder ``stage`` the new ``target``: the old one is renamed aside, ``stage`` renamed
    in, the old one removed. A kill between the renames is undone by :func:`recover`."""
    stage, target = Path(stage), Path(target)
    old = old_name(target)
    _remove(old)
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(stage, target)
    _remove(old)


def build(target: str | Path, work: Callable[[Path], T], *, keep: tuple[str, ...] = ()) -> T:
    """``work`` on a fresh :func:`staging` folder beside ``target`` (seeded with copies of the earlier target's
    entries named in ``keep``, e.g. a cache), swapped in when it returns; when it raises, ``target`` is left as
    it was (the staging folder stays for a look, and the next attempt removes it)."""
    target = Path(target)
    stage = staging(target)
    for name in keep:
        if (target / name).is_dir():
            shutil.copytree(target / name, stage / name)
    result = work(stage)
    swap_in(stage, target)
    return result
