"""Answers stop at the end of the turn, in each model's own template (the seed-like world's unlike sources).

The raw generation is inspected (special tokens kept): with the stops a :class:`LocalChatModel` sets, a model
that writes its end-of-turn marker stops right there, well before ``max_new_tokens``; the same generation
without them runs on into the next turn.
"""

from __future__ import annotations

import json

import pytest

from objectives.mtbench.generate import LocalChatModel
from objectives.templates import CHATML_TEMPLATE, end_of_turn

MAX_NEW = 80
# model -> (template the model is asked in, its end-of-turn marker, whether that marker is one token)
CASES = {"zahlen": ("<|im_start|>user", "<|im_end|>", True),   # ChatML added as tokens
         "artikel": ("<|user|>", "</s>", True),                 # Zephyr-style, a turn ends with eos
         "verben": ("<|im_start|>user", "<|im_end|>", False)}   # no template: the ChatML fallback, in characters


def _question(world, skill: str) -> str:
    rows = [json.loads(line) for line in world.mtbench_questions.read_text(encoding="utf-8").splitlines()]
    return next(r["turns"][0] for r in rows if r["category"] == skill)


def _raw(chat: LocalChatModel, prompt: str, stops: bool) -> tuple[str, int]:
    ids = chat.tok(prompt, add_special_tokens=False, return_tensors="pt")
    extra = {"eos_token_id": chat.eos, "stop_strings": chat.stop_strings, "tokenizer": chat.tok} if stops else {
        "eos_token_id": None}
    out = chat.model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=chat.pad, **extra)
    new = out[0, ids["input_ids"].shape[1]:]
    return chat.tok.decode(new, skip_special_tokens=False), len(new)


@pytest.mark.parametrize("skill", list(CASES))
def test_generation_stops_at_the_end_of_turn_of_the_models_own_template(seedlike_world, skill):
    marker_in_prompt, marker, one_token = CASES[skill]
    chat = LocalChatModel.from_pretrained(seedlike_world.experts[skill], chat_template=CHATML_TEMPLATE)
    assert chat.end_of_turn == end_of_turn(chat.tok) == marker
    assert (chat.tok.get_vocab().get(marker) in chat.eos) == one_token
    prompt = chat.render([{"role": "user", "content": _question(seedlike_world, skill)}])
    assert marker_in_prompt in prompt
    stopped, n = _raw(chat, prompt, stops=True)
    print(f"{skill}: {stopped!r}")
    assert n < MAX_NEW and stopped.rstrip().endswith(marker), stopped
    assert marker not in stopped.rstrip()[: -len(marker)]  # the first end of turn, not a later one
    free, n_free = _raw(chat, prompt, stops=False)
    assert n_free > n and free.startswith(stopped.rstrip())  # without the stops it runs on past the turn
    [reply] = chat.reply_all([[{"role": "user", "content": _question(seedlike_world, skill)}]], [0.0], MAX_NEW)
    assert reply and marker not in reply and stopped.startswith(reply)
