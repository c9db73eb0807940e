"""argparse value types shared by the sub-commands: a bad value is argparse's own one-line usage error."""

from __future__ import annotations

import argparse
import re

__all__ = ["device", "positive_int", "refuse_other_writer", "seed", "sha256"]


def seed(text: str) -> int:
    """A random seed torch, numpy and mergekit all accept: 0 to 2**32 - 1."""
    if not re.fullmatch(r"\d+", text) or int(text) > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to {2**32 - 1}, but got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, but got {text!r}")
    return int(text)


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"a device is cpu, cuda or cuda:N, but got {text!r}")
    return text


def sha256(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise argparse.ArgumentTypeError(f"a weights_sha256 is 64 lowercase hex digits, but got {text!r}")
    return text


def refuse_other_writer(config: str, out: str | None) -> None:
    """Refuse at once when another process is writing the run folder a command would write (``out``, else
    ``results/<name>`` of the config read as plain YAML): before the config is resolved and the libraries are
    imported, so a second writer hears it within a second or two. A config that cannot be read is left to the
    full checks."""
    from pathlib import Path

    import yaml

    from objectives.errors import UserError
    from search.rundir import RunDir
    from search.writelock import held_problems

    if out is None:
        try:
            name = (yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}).get("name")
        except (OSError, ValueError, yaml.YAMLError, AttributeError):  # unreadable: the full checks say why
            return
        if not isinstance(name, str):
            return
        out = str(RunDir.of(None, name).root)
    problems = held_problems(out)
    if problems:
        raise UserError(problems[0])
