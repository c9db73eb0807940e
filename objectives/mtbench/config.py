"""The ``mtbench:`` section of the run config; every default of the MT-Bench stage lives here."""

from __future__ import annotations

from typing import Literal

import pydantic

from objectives.schema import Strict

__all__ = ["DEFAULT_TEMPERATURES", "LANGUAGES", "JudgeConfig", "MTBenchConfig"]

# MT-Bench's sampling temperature per category (FastChat ``temperature_config``).
DEFAULT_TEMPERATURES: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}

LANGUAGES = ("de", "en")


class JudgeConfig(Strict):
    """Who grades the answers.

    ``openai``: any OpenAI-compatible chat-completions endpoint (``base_url`` + ``model``; the API key is
    read from the environment variable named by ``api_key_env`` and never written anywhere).
    ``hf``: a local Hugging Face model folder given as ``model``.
    ``standin``: an offline stand-in (reference key words, else character n-gram overlap, mapped to 1-10);
    every output it touches is labelled as NOT an MT-Bench score.
    """

    backend: Literal["openai", "hf", "standin"] = "standin"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    prompts: str | None = None  # path of a FastEval (.json) or FastChat (.jsonl) judge-prompts file
    temperature: float = pydantic.Field(0.0, ge=0.0, le=2.0)
    max_new_tokens: int = pydantic.Field(2048, ge=1)
    concurrency: int = pydantic.Field(8, ge=1, le=256)
    retries: int = pydantic.Field(6, ge=0, le=50)
    backoff_s: float = pydantic.Field(1.0, ge=0.0)
    max_backoff_s: float = pydantic.Field(60.0, ge=0.0)
    timeout_s: float = pydantic.Field(120.0, gt=0.0)
    probe: bool = True  # openai: one short request before any answer is generated; a judge that fails it stops the run
    batch_size: int = pydantic.Field(4, ge=1)  # hf backend only
    device: str = "cpu"  # hf backend only

    @pydantic.model_validator(mode="after")
    def _backend_fields(self) -> JudgeConfig:
        if self.backend == "openai" and (not self.base_url or not self.model):
            raise ValueError(
                "judge.backend 'openai' needs `base_url` and `model`, but got "
                f"(base_url={self.base_url!r}, model={self.model!r}); set both"
            )
        if self.backend == "hf" and not self.model:
            raise ValueError("judge.backend 'hf' needs `model` (a local model folder), but got model=None")
        return self


class MTBenchConfig(Strict):
    """Questions, generation settings and the judge of one MT-Bench run."""

    language: Literal["de", "en"] = "de"
    questions: str | None = None  # FastEval .json, FastChat .jsonl, or a Hugging Face dataset id
    max_new_tokens: int = pydantic.Field(1024, ge=1)
    batch_size: int = pydantic.Field(8, ge=1)
    temperatures: dict[str, float] = pydantic.Field(default_factory=lambda: dict(DEFAULT_TEMPERATURES))
    default_temperature: float = pydantic.Field(0.7, ge=0.0)  # for categories not in ``temperatures``
    system_prompt: str | None = None
    chat_template: str | None = pydantic.Field(None, description=(
        "template for answering models whose tokenizer has none (Mistral-7B-v0.1, a merge that took its tokenizer "
        "from it): `chatml` (built in), a Jinja template or a .jinja file; null or `model` = none. A model with its own "
        "template is always asked in it"))
    seed: int = 0
    device: str = "cpu"
    limit: int | None = pydantic.Field(None, ge=1)  # first N questions only (smoke runs)
    judge: JudgeConfig = JudgeConfig()

    def temperature(self, category: str) -> float:
        return self.temperatures.get(category, self.default_temperature)
