"""argparse value types shared by the sub-commands: a bad value is argparse's own one-line usage error."""

from __future__ import annotations

import argparse
import re

__all__ = ["device", "positive_int", "seed", "sha256"]


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
