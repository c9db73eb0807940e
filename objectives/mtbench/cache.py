"""Resume for MT-Bench runs: finished answers and judge replies are kept as they arrive.

A :class:`ReplyCache` is an append-only JSONL file of ``{"key", "reply"}`` lines. A key is the SHA-256 of the
cache's *scope* (what produced the reply: the model's fingerprint, or the judge's backend, model, endpoint
and sampling settings) and the request itself (the whole conversation and its sampling settings). A run that
is killed, or a judge that rate-limits for an hour, loses only the replies in flight: the next run asks only
for the rest. Replies that failed (``$ERROR$ ...``) are never kept, so they are asked again. A line cut off
by a kill is skipped. Delete the file (``OUT/cache/``) to answer or judge everything afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from objectives.mtbench.client import ERROR_REPLY

__all__ = ["ReplyCache", "cached_replies"]


class ReplyCache:
    """Replies by key, loaded from and appended to ``path`` (``None``: remember nothing)."""

    def __init__(self, path: str | Path | None, scope: Any):
        self.path = Path(path) if path is not None else None
        self.scope = json.dumps(scope, sort_keys=True, ensure_ascii=False)
        self.replies: dict[str, str] = {}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.replies[str(rec["key"])] = str(rec["reply"])
                except (ValueError, KeyError, TypeError):
                    continue  # the last line of a killed run may be cut off

    def key(self, request: Any) -> str:
        text = json.dumps([self.scope, request], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def put(self, key: str, reply: str) -> None:
        self.replies[key] = reply
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")


def cached_replies(cache: ReplyCache | None, requests: list[Any],
                   ask: Callable[[list[int], Callable[[int, str], None]], Any]) -> list[str]:
    """Replies to ``requests``: kept ones from ``cache``, the rest from ``ask(todo, on_reply)``.

    ``ask`` gets the indices still to answer, returns their replies in that order, and should call
    ``on_reply(j, reply)`` for the ``j``-th of them as soon as that reply is final (so it is kept even if a
    later one fails or the process is killed).
    """
    cache = cache or ReplyCache(None, None)
    keys = [cache.key(r) for r in requests]
    out: list[str | None] = [cache.replies.get(k) for k in keys]
    todo = [i for i, reply in enumerate(out) if reply is None]

    def on_reply(j: int, reply: str) -> None:
        i = todo[j]
        out[i] = reply
        if not reply.startswith(ERROR_REPLY):
            cache.put(keys[i], reply)

    if todo:
        replies = ask(todo, on_reply)
        for j, reply in enumerate(replies or []):  # a backend that returned replies without reporting them
            if out[todo[j]] is None:
                on_reply(j, reply)
    missing = [i for i in todo if out[i] is None]
    if missing:
        raise RuntimeError(f"{len(missing)} request(s) got no reply (first: #{missing[0]})")
    return [str(r) for r in out]
