"""German preference data for the DPO stage: load, normalise to trl's conversational layout, check, split.

The accepted row layouts (orca, LLaMA-Factory's alpaca and sharegpt ranking layouts, trl's explicit and
implicit-prompt layouts, UltraFeedback-binarized) are detected from the columns
(:mod:`search.stages.pref_layouts`); ``dpo.data.columns`` maps a dataset's own column names onto them.

Every row becomes ``{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}``, so
trl's ``DPOTrainer`` and :func:`objectives.preference.preference_scores` render it with the model's chat
template. Sources: a local ``.json``/``.jsonl``/``.parquet`` file or a Hugging Face dataset id (``datasets``).

Bad rows — missing or empty fields, ``chosen == rejected``, longer than ``max_length`` tokens — are collected
with their 1-based row numbers into a :class:`BadRows` report; the caller skips them or fails.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from objectives.preference import encode_pair
from objectives.templates import CHATML_TEMPLATE
from search.stages.pref_layouts import LAYOUTS, detect_layout, rename_columns, row_pair

__all__ = [
    "FILE_TYPES",
    "CHATML_TEMPLATE",
    "LAYOUTS",
    "BadRows",
    "Pair",
    "check_lengths",
    "hub_snapshot",
    "detect_layout",
    "in_hub_cache",
    "load_rows",
    "normalise",
    "split_heldout",
]

Pair = dict[str, Any]

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
FILE_TYPES = tuple(_FILE_BUILDERS)  # suffixes of local preference files


@dataclass
class BadRows:
    """Rows rejected by a check: ``reasons[reason] = [1-based row numbers]`` for one named source."""

    source: str
    total: int = 0
    reasons: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, row: int) -> None:
        self.reasons[reason].append(row)

    @property
    def count(self) -> int:
        return len({r for rows in self.reasons.values() for r in rows})

    def summary(self, show: int = 10) -> str:
        """``SOURCE: 3 of 400 rows bad: empty chosen (rows 4, 9); chosen == rejected (row 12)``."""
        parts = []
        for reason, rows in self.reasons.items():
            head = ", ".join(map(str, rows[:show])) + (f", ... ({len(rows) - show} more)" if len(rows) > show else "")
            parts.append(f"{reason} ({len(rows)}: row{'s' if len(rows) > 1 else ''} {head})")
        return f"{self.source}: {self.count} of {self.total} rows bad: " + "; ".join(parts)


def load_rows(source: str, *, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local JSON/JSONL/parquet file or of split ``split`` of a Hugging Face dataset id."""
    import datasets

    path = Path(source)
    looks_local = path.suffix.lower() in _FILE_BUILDERS or source.startswith((".", "/", "~")) or path.exists()
    try:
        if looks_local:
            path = path.expanduser()
            if not path.is_file():
                raise UserError(f"preference data {source!r} does not exist: give a .json, .jsonl or .parquet file "
                                "or a Hugging Face dataset id (owner/name)")
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise UserError(f"preference data {source!r}: unsupported file type {path.suffix!r}: "
                                "use .json, .jsonl or .parquet")
            if path.suffix.lower() == ".jsonl":
                _check_jsonl(path, source)
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            ds = _load_hub(source, split)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types (connection, arrow, split)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"preference data {source!r} could not be loaded ({type(err).__name__}: {first}): "
                        "check the path/dataset id, the split and that every row has the same column types") from None
    return list(ds)


def _offline() -> bool:
    import datasets.config
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def _load_hub(source: str, split: str):
    """Split ``split`` of hub dataset ``source``: from the hub (or ``datasets``' own cache); offline, or when the hub
    cannot be reached, from its snapshot in the local hub cache (``huggingface-cli download --repo-type dataset
    ID``), which ``load_dataset(ID)`` does not read."""
    import datasets

    snapshot = hub_snapshot(source)
    if snapshot is not None and _offline():
        return datasets.load_dataset(str(snapshot), split=split)
    try:
        return datasets.load_dataset(source, split=split)
    except ConnectionError:
        if snapshot is None:
            raise
        return datasets.load_dataset(str(snapshot), split=split)


def hub_snapshot(dataset_id: str) -> Path | None:
    """The folder of a Hugging Face dataset id's snapshot in the local hub cache, found without the network (None:
    not cached). ``datasets.load_dataset(ID)`` does not read it offline (it wants its own prepared cache), the
    folder loads like any local dataset folder."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(dataset_id, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001 -- not cached, no cache folder yet, or not a repo id
        return None


def in_hub_cache(dataset_id: str) -> bool:
    """Whether a Hugging Face dataset id has a snapshot in the local hub cache (checked without the network)."""
    return hub_snapshot(dataset_id) is not None


def _check_jsonl(path: Path, source: str) -> None:
    """An empty JSONL file, or a line that is not one JSON object, named by its line number."""
    import json

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"preference data {source!r} is not UTF-8 text: save it as UTF-8") from None
    rows = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"preference data {source!r} line {n}: not valid JSON ({err.msg}): one JSON object "
                            "per line") from None
        if not isinstance(row, dict):
            raise UserError(f"preference data {source!r} line {n}: expected a JSON object, got "
                            f"{type(row).__name__}")
        rows += 1
    if rows == 0:
        raise UserError(f"preference data {source!r} has no rows: give a file with at least one preference pair")


def normalise(rows: list[dict[str, Any]], source: str,
              columns: dict[str, str] | None = None) -> tuple[list[Pair], list[int], BadRows]:
    """Normalise ``rows`` to conversational pairs: ``(pairs, their 1-based row numbers, bad rows)``;
    ``columns`` (``{role: column}``, ``dpo.data.columns``) renames the dataset's columns first."""
    if not rows:
        raise UserError(f"preference data {source!r} has no rows: give a file with at least one preference pair")
    if columns:
        present = set().union(*(r.keys() for r in rows))
        missing = sorted(c for c in columns.values() if c not in present)
        if missing:
            raise UserError(f"preference data {source!r}: dpo.data.columns names {missing}, which it does not have "
                            f"(its columns: {sorted(present)}): fix the mapping")
    rows = [rename_columns(r, columns) for r in rows]
    layout = detect_layout(set().union(*(r.keys() for r in rows)), source)
    bad = BadRows(source, total=len(rows))
    pairs, numbers = [], []
    for i, row in enumerate(rows, start=1):
        pair, reason = row_pair(row, layout)
        if pair is None:
            bad.add(reason, i)
        else:
            pairs.append(pair)
            numbers.append(i)
    return pairs, numbers, bad


def check_lengths(pairs: list[Pair], numbers: list[int], tokenizer, max_length: int,
                  bad: BadRows) -> tuple[list[Pair], list[int]]:
    """Drop pairs whose prompt + chosen or prompt + rejected exceeds ``max_length`` tokens (recorded in ``bad``)."""
    kept, kept_numbers = [], []
    for pair, number in zip(pairs, numbers):
        ids_c, _, ids_r, _ = encode_pair(tokenizer, pair)
        if max(len(ids_c), len(ids_r)) > max_length:
            bad.add(f"longer than max_length={max_length} tokens", number)
        else:
            kept.append(pair)
            kept_numbers.append(number)
    return kept, kept_numbers


def split_heldout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Split off ``fraction`` of ``pairs`` (at least one, seeded shuffle): ``(train, heldout)``."""
    if len(pairs) < 2:
        raise UserError(f"cannot split a held-out set off {len(pairs)} usable pair(s): give dpo.data.heldout "
                        "or more training pairs")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_held = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held = set(order[:n_held])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]
