"""The demo world's chat side: the three skills asked in ChatML conversations, and the MT-Bench-style
questions that grade them.

Training: every skill item is a chat turn (``Welche Zahl ist am größten: drei, neun, fünf?`` -> ``Am größten
ist neun.``),
alone or followed by a second item asked as a short follow-up (``Und bei zwei, elf, sieben?``). The base sees
such conversations with random answers (the format only), each expert with the right answers of its own skill.
The lm-eval tasks ask the same questions in the same template (:func:`demoworld.layout.task_yaml`), so the chat
evaluation measures the skills the search optimises.

Questions (FastChat ``question.jsonl`` layout, plus ``keywords``): :data:`QUESTIONS_PER_SKILL` two-turn
questions per skill, made from *test* items (stems and number triples that no expert was trained on and the
search never scored), category = the skill's name; plus :data:`GENERIC_QUESTIONS` everyday questions
(category ``alltag``). Every turn has a reference answer and ``keywords`` = ``{"accept": [...], "reject":
[...]}``: for a skill turn, the word that tells the reference apart and those of the other options; for an everyday
turn, any place and English refusals. The offline stand-in judge rates a turn by them
(:class:`objectives.mtbench.StandInJudge`).

A second question file of the same kind (:func:`search_questions`) is made from *search* items for a search's
chat objective: :data:`SEARCH_QUESTIONS` questions sharing no turn with the final ones, so the final measurement
stays unseen by the search.
"""

from __future__ import annotations

import random

from demoworld.text import PLACES, SKILLS, SUBJECTS, VERBS3, Item, conversation

__all__ = ["GENERIC_QUESTIONS", "QUESTIONS_PER_SKILL", "SEARCH_QUESTIONS", "SYSTEM", "answer_keywords",
           "mtbench_questions", "search_questions", "skill_chat_docs", "user_turn"]

SYSTEM = "Du bist ein hilfreicher Assistent."
QUESTIONS_PER_SKILL = 24  # 24 per skill + 8 everyday = 80 questions, as many as MT-Bench has
GENERIC_QUESTIONS = 8
SEARCH_QUESTIONS = (30, 6)  # per skill, everyday: 96 questions for a chat objective's rungs (e.g. 16 -> 48 -> 96)
REFUSAL_WORDS = ["sorry", "know", "idea"]  # the English refusals of the preference data's rejected answers


def user_turn(item: Item) -> str:
    """The item's question as a user message."""
    return item.text


def _key(option: str) -> str:
    """The word that tells an option apart (``Am größten ist neun.`` -> ``neun``)."""
    return option.rstrip(".").split()[-1].strip("-:")


def answer_keywords(item: Item) -> dict[str, list[str]]:
    """What a correct chat answer to ``item`` contains (its right option) and what a wrong one does."""
    return {"accept": [_key(item.choices[item.gold])],
            "reject": [_key(c) for i, c in enumerate(item.choices) if i != item.gold]}


def skill_chat_docs(items: list[Item], rng: random.Random, *, correct: bool) -> list[str]:
    """One conversation per item: every other one continues with the next item as a follow-up turn. With
    ``correct=False`` every answer is a random option (the base learns the format, not the skill)."""
    def reply(it: Item) -> str:
        return it.choices[it.gold] if correct else rng.choice(it.choices)

    docs = []
    for i, it in enumerate(items):
        turns = [(user_turn(it), reply(it))]
        if i % 2:
            nxt = items[(i + 1) % len(items)]
            turns.append((nxt.follow_up, reply(nxt)))
        docs.append(conversation(turns, SYSTEM if rng.random() < 0.3 else None))
    return docs


def _skill_question(skill: str, first: Item, second: Item) -> dict:
    return {"category": skill, "turns": [user_turn(first), second.follow_up],
            "reference": [first.choices[first.gold], second.choices[second.gold]],
            "keywords": [answer_keywords(first), answer_keywords(second)]}


def _generic_question(rng: random.Random) -> dict:
    (art, noun), (art2, noun2) = rng.sample(SUBJECTS, 2)
    verb, verb2 = rng.sample(VERBS3, 2)
    place, place2 = rng.sample(PLACES, 2)
    keys = {"accept": list(PLACES), "reject": REFUSAL_WORDS}
    return {"category": "alltag", "turns": [f"Wo {verb} {art} {noun}?", f"Und wo {verb2} {art2} {noun2}?"],
            "reference": [f"{art.capitalize()} {noun} {verb} {place}.", f"{art2.capitalize()} {noun2} {verb2} {place2}."],
            "keywords": [keys, keys]}


def mtbench_questions(test_items: dict[str, list[Item]], seed: int) -> list[dict]:
    """The world's question file rows: per skill, :data:`QUESTIONS_PER_SKILL` questions from that skill's test
    items (two items each, the second as the follow-up), then the everyday questions; ids 1, 2, ..."""
    rows = []
    for skill in SKILLS:
        items = test_items[skill]
        rows += [_skill_question(skill, items[2 * k], items[2 * k + 1]) for k in range(QUESTIONS_PER_SKILL)]
    rng = random.Random(f"{seed}-mtbench")
    rows += [_generic_question(rng) for _ in range(GENERIC_QUESTIONS)]
    return [{"question_id": i + 1, **r} for i, r in enumerate(rows)]


def search_questions(search_items: dict[str, list[Item]], seed: int, final: list[dict]) -> list[dict]:
    """Question rows for a search's chat objective: per skill ``SEARCH_QUESTIONS[0]`` questions from that skill's
    *search* items, then ``SEARCH_QUESTIONS[1]`` everyday questions none of whose turns appears in ``final`` (the
    world's MT-Bench questions); ids ``s1, s2, ...``, skills interleaved so that any prefix covers every
    category."""
    per_skill, generic = SEARCH_QUESTIONS
    by_skill = [[_skill_question(skill, search_items[skill][2 * k], search_items[skill][2 * k + 1])
                 for k in range(per_skill)] for skill in SKILLS]
    rows = [q for group in zip(*by_skill) for q in group]
    seen = {t for q in final for t in q["turns"]}
    rng = random.Random(f"{seed}-chat-search")
    everyday: list[dict] = []
    while len(everyday) < generic:
        q = _generic_question(rng)
        if not seen.intersection(q["turns"]):
            seen.update(q["turns"])
            everyday.append(q)
    # an everyday question after every few skill questions, so that a first rung of 16 has one
    step = max(1, len(rows) // generic)
    for i, q in enumerate(everyday):
        rows.insert(min(len(rows), (i + 1) * step + i), q)
    return [{"question_id": f"s{i + 1}", **r} for i, r in enumerate(rows)]
