"""An OpenAI-compatible chat-completions client: concurrent (asyncio + aiohttp, no threads), retrying.

Retried with exponential backoff (honouring ``Retry-After``): 429, 5xx, timeouts, dropped connections and
garbage replies (a body that is not a chat completion). Any other 4xx is the user's to fix and stops the
run with one line. A request that still fails after the last retry yields :data:`ERROR_REPLY` + the reason,
which the score parser drops and counts. The API key is read from the environment at call time and is
never logged, returned or written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass

import aiohttp
from objectives.progress import progress_bar

from objectives.errors import UserError

__all__ = ["ERROR_REPLY", "HttpSettings", "chat_all"]

log = logging.getLogger("merge_search.mtbench")

ERROR_REPLY = "$ERROR$"

@dataclass(frozen=True)
class HttpSettings:
    base_url: str
    model: str
    api_key_env: str | None = None
    max_tokens: int = 1024
    concurrency: int = 8
    retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0

class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after

def _url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"

def _headers(s: HttpSettings) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(s.api_key_env) if s.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers

def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

async def _post(session: aiohttp.ClientSession, s: HttpSettings, payload: dict) -> str:
    try:
        async with session.post(_url(s.base_url), json=payload, headers=_headers(s)) as resp:
            body = await resp.read()
            if resp.status == 429 or resp.status >= 500:
                raise _Retryable(f"HTTP {resp.status}", _retry_after(resp.headers.get("Retry-After")))
            if resp.status != 200:
                hint = f" (check the key in ${s.api_key_env})" if resp.status in (401, 403) and s.api_key_env else ""
                raise UserError(
                    f"chat endpoint {_url(s.base_url)} answered HTTP {resp.status}{hint}: "
                    f"{body[:200].decode('utf-8', 'replace')!r}; check base_url, model and the API key"
                )
    except (TimeoutError, aiohttp.ClientError) as err:
        raise _Retryable(f"{type(err).__name__}: {err}".rstrip(": ")) from None
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise _Retryable(f"garbage reply ({type(err).__name__}): {body[:80]!r}") from None
    return content

async def _one(session, sem, s: HttpSettings, messages: list[dict], temperature: float, bar) -> str:
    """One request, retried; its reply, or :data:`ERROR_REPLY` + the reason after the last retry."""
    payload = {"model": s.model, "messages": messages, "temperature": temperature, "max_tokens": s.max_tokens}
    reason = ""
    for attempt in range(s.retries + 1):
        async with sem:
            try:
                reply = await _post(session, s, payload)
                bar.update(1)
                return reply
            except _Retryable as err:
                reason = str(err)
                delay = min(s.max_backoff_s, s.backoff_s * 2**attempt)
                if err.retry_after is not None:
                    delay = min(s.max_backoff_s, max(delay, err.retry_after))
        if attempt < s.retries:
            log.warning("chat request failed (%s); retry %d/%d in %.1fs", reason, attempt + 1, s.retries, delay)
            await asyncio.sleep(delay)
    log.warning("chat request failed after %d retries (%s); recorded as unparseable", s.retries, reason)
    bar.update(1)
    return f"{ERROR_REPLY} {reason}"

async def _run(s: HttpSettings, requests: list[tuple[list[dict], float]], desc: str, on_reply) -> list[str]:
    sem = asyncio.Semaphore(s.concurrency)
    timeout = aiohttp.ClientTimeout(total=s.timeout_s)

    async def one(i: int, messages: list[dict], temperature: float, bar) -> str:
        reply = await _one(session, sem, s, messages, temperature, bar)
        if on_reply is not None:
            on_reply(i, reply)
        return reply

    with progress_bar(total=len(requests), desc=desc, unit="request") as bar:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [asyncio.ensure_future(one(i, m, t, bar)) for i, (m, t) in enumerate(requests)]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for t in tasks:
                    t.cancel()

def chat_all(s: HttpSettings, requests: list[tuple[list[dict], float]], desc: str = "chat",
             on_reply=None) -> list[str]:
    """Reply to every ``(messages, temperature)`` in order, ``s.concurrency`` requests in flight at most.

    ``on_reply(i, reply)``, if given, is called as each request finishes (in the event loop, no threads).
    """
    return asyncio.run(_run(s, requests, desc, on_reply))
