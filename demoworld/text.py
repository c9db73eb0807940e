"""Deterministic generators of the demo world's German text, written by this project.

Three rule-based skills (they generalise to held-out items, unlike memorised facts):

* ``zahlen``  - which of three German number words (null..zwanzig) is the largest;
* ``artikel`` - the article of an invented noun, decided by its suffix (-ung -> die, -chen -> das, ...);
* ``verben``  - the present-tense ending of an invented regular verb for a given pronoun (-e, -st, -t, -en).

Every item is a chat question whose answer is a fixed phrase per skill and one closed-vocabulary word (``Am
größten ist neun.``, ``Es heißt: die.``, ``Die Endung ist -st.``), so a model can *generate* the answer as well
as rank the options: the phrase anchors the format, and the tiny demo models cannot copy an invented word
reliably, which a chat evaluation must not measure. Every answer ends with ``.`` so that options which
are prefixes of each other (vier/vierzehn, -e/-en) stay distinguishable by summed log-likelihood. Invented
stems and number triples are split disjointly into ``train`` (expert fine-tuning), ``search`` and ``test``.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

__all__ = [
    "NUMBERS",
    "SKILLS",
    "Item",
    "chat_docs",
    "conversation",
    "generic_docs",
    "preference_rows",
    "skill_items",
]

SKILLS = ("zahlen", "artikel", "verben")
SPLITS = ("train", "search", "test")

NUMBERS = [
    "null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf",
    "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn", "zwanzig",
]
SUFFIX_ARTICLE = {
    "ung": "die", "heit": "die", "keit": "die", "schaft": "die",
    "ling": "der", "ismus": "der", "or": "der", "ich": "der",
    "chen": "das", "lein": "das", "ment": "das", "um": "das",
}
ARTICLES = ("der", "die", "das")
PRONOUN_ENDING = {"ich": "e", "du": "st", "er": "t", "sie": "t", "wir": "en", "ihr": "t"}
VERB_ENDINGS = ("e", "st", "t", "en")

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "w", "z", "br", "kl", "tr", "fl", "gr", "sp", "pl", "schm"]
VOWELS = ["a", "e", "i", "o", "u", "ä", "ö", "ü", "au", "ei"]
CODAS = ["l", "m", "n", "r", "k", "p", "lk", "rn", "mp", "rf", "lm", "nk", "rg"]


@dataclass(frozen=True)
class Item:
    """One multiple-choice item: ``text`` is the question (a chat user turn), ``choices`` the options (the
    assistant's whole answer), ``gold`` the answer index."""

    text: str
    choices: tuple[str, ...]
    gold: int
    follow_up: str = ""  # the same question as a short chat follow-up ("Und zu Brauung?")

    def as_row(self) -> dict:
        return {"text": self.text, "choices": list(self.choices), "gold": self.gold}


def _stems(rng: random.Random, n: int) -> list[str]:
    stems = sorted({o + v + c for o in ONSETS for v in VOWELS for c in CODAS})
    rng.shuffle(stems)
    return stems[:n]


def _split(seq: list, sizes: tuple[int, int, int]) -> dict[str, list]:
    a, b, _ = sizes
    return {"search": seq[:a], "test": seq[a:a + b], "train": seq[a + b:]}


def _zahlen(rng: random.Random, n_eval: int) -> dict[str, list[Item]]:
    triples = list(itertools.combinations(range(len(NUMBERS)), 3))
    rng.shuffle(triples)
    parts = _split(triples, (n_eval, n_eval, 0))
    out = {}
    for split, ts in parts.items():
        items = []
        for t in ts:
            order = list(t)
            rng.shuffle(order)
            words = [NUMBERS[i] for i in order]
            text = f"Welche Zahl ist am größten: {', '.join(words)}?"
            items.append(Item(text, tuple(f"Am größten ist {w}." for w in words), order.index(max(order)),
                              f"Und bei {', '.join(words)}?"))
        out[split] = items
    return out


def _artikel(rng: random.Random, n_eval: int) -> dict[str, list[Item]]:
    stems = _stems(rng, 3000)
    parts = _split(stems, (n_eval, n_eval, 0))
    suffixes = sorted(SUFFIX_ARTICLE)
    out = {}
    for split, ss in parts.items():
        items = []
        for i, stem in enumerate(ss):
            # Cycle through the suffixes so the three articles are balanced in every split.
            noun = stem.capitalize() + suffixes[i % len(suffixes)]
            art = SUFFIX_ARTICLE[suffixes[i % len(suffixes)]]
            text = f"Welcher Artikel passt zu {noun}?"
            items.append(Item(text, tuple(f"Es heißt: {a}." for a in ARTICLES), ARTICLES.index(art), f"Und zu {noun}?"))
        out[split] = items
    return out


def _verben(rng: random.Random, n_eval: int) -> dict[str, list[Item]]:
    stems = _stems(rng, 3000)
    parts = _split(stems, (n_eval, n_eval, 0))
    pronouns = ["ich", "du", "er", "wir", "ich", "du", "wir", "ihr"]  # endings e, st, t, en balanced
    out = {}
    for split, ss in parts.items():
        items = []
        for i, stem in enumerate(ss):
            pron = pronouns[i % len(pronouns)]
            text = f"Welche Endung bekommt {stem}en mit {pron}?"
            choices = tuple(f"Die Endung ist -{e}." for e in VERB_ENDINGS)
            items.append(Item(text, choices, VERB_ENDINGS.index(PRONOUN_ENDING[pron]), f"Und {stem}en mit {pron}?"))
        out[split] = items
    return out


def skill_items(seed: int, n_eval: int = 200) -> dict[str, dict[str, list[Item]]]:
    """``{skill: {split: [Item]}}``; the splits share no number triple and no invented stem."""
    makers = {"zahlen": _zahlen, "artikel": _artikel, "verben": _verben}
    return {s: makers[s](random.Random(f"{seed}-{s}"), n_eval) for s in SKILLS}


# --- generic German text (pretraining) -------------------------------------------------------------------

SUBJECTS = [("der", "Hund"), ("die", "Katze"), ("das", "Kind"), ("der", "Bauer"), ("die", "Frau"),
            ("der", "Mann"), ("das", "Pferd"), ("die", "Lehrerin"), ("der", "Vogel"), ("die", "Oma")]
VERBS3 = ["läuft", "schläft", "singt", "liest", "kocht", "malt", "wartet", "arbeitet", "schwimmt", "tanzt"]
PLACES = ["im Garten", "in der Stadt", "am Fluss", "im Haus", "auf dem Berg", "im Wald", "am See"]
TIMES = ["heute", "morgen", "am Abend", "oft", "gern", "jeden Tag", "im Sommer"]
ADJS = ["groß", "klein", "schnell", "müde", "froh", "alt", "jung", "klug", "laut", "leise"]
THINGS = ["Äpfel", "Bücher", "Bäume", "Blumen", "Steine", "Häuser", "Vögel", "Kühe"]


def _generic(rng: random.Random) -> str:
    art, noun = rng.choice(SUBJECTS)
    kind = rng.randrange(6)
    if kind == 0:
        return f"{art.capitalize()} {noun} {rng.choice(VERBS3)} {rng.choice(TIMES)} {rng.choice(PLACES)}."
    if kind == 1:
        return f"{art.capitalize()} {noun} ist {rng.choice(ADJS)} und {rng.choice(ADJS)}."
    if kind == 2:
        return f"Im Dorf gibt es {rng.choice(NUMBERS[2:])} {rng.choice(THINGS)}."
    if kind == 3:
        place = rng.choice(PLACES)
        return f"Frage: Wo {rng.choice(VERBS3)} {art} {noun}?\nAntwort: {place}."
    if kind == 4:
        return f"Heute ist es {rng.choice(ADJS)}, und {art} {noun} {rng.choice(VERBS3)} {rng.choice(PLACES)}."
    return f"{art.capitalize()} {noun} sieht {rng.choice(NUMBERS[2:])} {rng.choice(THINGS)} {rng.choice(PLACES)}."


def generic_docs(seed: int, n: int) -> list[str]:
    """``n`` short German documents of one to three sentences."""
    rng = random.Random(f"{seed}-generic")
    return [" ".join(_generic(rng) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def conversation(turns: list[tuple[str, str]], system: str | None = None) -> str:
    """A ChatML conversation of ``(user, assistant)`` turns, as the demo tokenizer's template renders it."""
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system else []
    parts += [f"<|im_start|>user\n{u}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n" for u, a in turns]
    return "".join(parts)


def chat_docs(seed: int, n: int) -> list[str]:
    """Short ChatML conversations so the models answer inside the chat template."""
    rng = random.Random(f"{seed}-chat")
    docs = []
    for _ in range(n):
        art, noun = rng.choice(SUBJECTS)
        verb, place = rng.choice(VERBS3), rng.choice(PLACES)
        docs.append(conversation([(f"Wo {verb} {art} {noun}?", f"{art.capitalize()} {noun} {verb} {place}.")],
                                 "Du bist ein hilfreicher Assistent." if rng.random() < 0.5 else None))
    return docs


# --- preference pairs (orca_dpo_pairs_de layout) ----------------------------------------------------------

REJECTED_EN = ["Sorry, I cannot help with that.", "I don't know.", "No idea, ask someone else."]


def _everyday_pair(rng: random.Random) -> tuple[str, str, str]:
    art, noun = rng.choice(SUBJECTS)
    verb, place = rng.choice(VERBS3), rng.choice(PLACES)
    wrong = rng.choice([p for p in PLACES if p != place])
    question = f"Wo {verb} {art} {noun}, wenn es {rng.choice(ADJS)} ist?"
    rejected = rng.choice(REJECTED_EN) if rng.random() < 0.5 else f"{wrong[0].upper()}{wrong[1:]}."
    return question, f"Gern! {art.capitalize()} {noun} {verb} {place}.", rejected


def preference_rows(seed: int, n: int, train_items: dict[str, list[Item]]) -> list[dict]:
    """Rows with ``system``, ``question``, ``chosen``, ``rejected``, mirroring orca_dpo_pairs (chosen: a
    stronger model's answer, rejected: a weaker one's). Three rows in four ask a skill question of a *train* item
    (never in a search, test or MT-Bench item): chosen = the right answer in the skill's phrase, rejected = a
    plausible wrong option (two in three) or an English refusal (off-format). The fourth is an everyday
    question: chosen = a polite, correct German sentence, rejected = an English refusal or a curt wrong place."""
    rng = random.Random(f"{seed}-pref")
    pools = {s: rng.sample(train_items[s], len(train_items[s])) for s in SKILLS}
    rows = []
    for i in range(n):
        if i % 4 == 3:
            question, chosen, rejected = _everyday_pair(rng)
        else:
            skill = SKILLS[i % 4]
            it = pools[skill][(i // 4) % len(pools[skill])]
            wrong = [c for j, c in enumerate(it.choices) if j != it.gold]
            question, chosen = it.text, it.choices[it.gold]
            rejected = rng.choice(wrong) if rng.random() < 2 / 3 else rng.choice(REJECTED_EN)
        rows.append({"system": "Du bist ein hilfreicher Assistent.", "question": question,
                     "chosen": chosen, "rejected": rejected})
    return rows
