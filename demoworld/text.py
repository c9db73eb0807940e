"""Deterministic generators of the demo world's German text, written by this project.

Three rule-based skills (they generalise to held-out items, unlike memorised facts):

* ``zahlen``  - which of three German number words (null..zwanzig) is the largest;
* ``artikel`` - the article of an invented noun, decided by its suffix (-ung -> die, -chen -> das, ...);
* ``verben``  - the present-tense form of an invented regular verb for a given pronoun.

Every answer ends with ``.`` so that options which are prefixes of each other (vier/vierzehn) stay
distinguishable by summed log-likelihood. Invented stems and number triples are split disjointly into
``train`` (expert fine-tuning), ``search`` and ``test``.
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
    "generic_docs",
    "mtbench_questions",
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
    """One multiple-choice item: ``text`` is the prompt, ``choices`` the options, ``gold`` the answer index."""

    text: str
    choices: tuple[str, ...]
    gold: int

    def as_row(self) -> dict:
        return {"text": self.text, "choices": list(self.choices), "gold": self.gold}

    def as_training_doc(self) -> str:
        return f"{self.text} {self.choices[self.gold]}"


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
            text = f"Welche Zahl ist am größten: {', '.join(words)}?\nAntwort:"
            items.append(Item(text, tuple(f"{w}." for w in words), order.index(max(order))))
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
            text = f"Welcher Artikel passt zu {noun}?\nAntwort:"
            items.append(Item(text, tuple(f"{a} {noun}." for a in ARTICLES), ARTICLES.index(art)))
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
            text = f"Konjugiere {stem}en mit {pron}.\nAntwort:"
            choices = tuple(f"{pron} {stem}{e}." for e in VERB_ENDINGS)
            items.append(Item(text, choices, VERB_ENDINGS.index(PRONOUN_ENDING[pron])))
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


def _chat(user: str, assistant: str, system: str | None = None) -> str:
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system else []
    parts.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n")
    return "".join(parts)


def chat_docs(seed: int, n: int) -> list[str]:
    """Short ChatML conversations so the models answer inside the chat template."""
    rng = random.Random(f"{seed}-chat")
    docs = []
    for _ in range(n):
        art, noun = rng.choice(SUBJECTS)
        verb, place = rng.choice(VERBS3), rng.choice(PLACES)
        docs.append(_chat(f"Wo {verb} {art} {noun}?", f"{art.capitalize()} {noun} {verb} {place}.",
                          "Du bist ein hilfreicher Assistent." if rng.random() < 0.5 else None))
    return docs


# --- preference pairs (orca_dpo_pairs_de layout) ----------------------------------------------------------

REJECTED_EN = ["Sorry, I cannot help with that.", "I don't know.", "No idea, ask someone else."]


def preference_rows(seed: int, n: int) -> list[dict]:
    """Rows with ``system``, ``question``, ``chosen``, ``rejected``: the chosen answer is a polite, correct
    German sentence; the rejected one is an English refusal or a curt wrong German answer."""
    rng = random.Random(f"{seed}-pref")
    rows = []
    for _ in range(n):
        art, noun = rng.choice(SUBJECTS)
        verb, place = rng.choice(VERBS3), rng.choice(PLACES)
        wrong = rng.choice([p for p in PLACES if p != place])
        question = f"Wo {verb} {art} {noun}, wenn es {rng.choice(ADJS)} ist?"
        chosen = f"Gern! {art.capitalize()} {noun} {verb} {place}."
        rejected = rng.choice(REJECTED_EN) if rng.random() < 0.5 else f"{wrong[0].upper()}{wrong[1:]}."
        rows.append({"system": "Du bist ein hilfreicher Assistent.", "question": question,
                     "chosen": chosen, "rejected": rejected})
    return rows


# --- MT-Bench-style questions (FastChat question.jsonl layout) --------------------------------------------

_MT = [
    ("writing", ["Schreibe einen kurzen Satz über den Hund im Garten.", "Schreibe ihn jetzt fröhlicher."],
     ["Der Hund spielt im Garten.", "Der Hund spielt froh im Garten."]),
    ("writing", ["Schreibe einen Satz über die Katze.", "Mache den Satz kürzer."],
     ["Die Katze schläft im Haus.", "Die Katze schläft."]),
    ("roleplay", ["Du bist ein Bauer. Wo arbeitest du?", "Und am Abend?"],
     ["Ich arbeite auf dem Feld.", "Am Abend bin ich im Haus."]),
    ("roleplay", ["Du bist eine Lehrerin. Was machst du heute?", "Und morgen?"],
     ["Heute lese ich ein Buch.", "Morgen male ich im Garten."]),
    ("reasoning", ["Welche Zahl ist am größten: drei, neun, fünf?", "Und welche ist am kleinsten?"],
     ["Die größte Zahl ist neun.", "Die kleinste Zahl ist drei."]),
    ("reasoning", ["Welche Zahl ist am größten: zwölf, zwei, acht?", "Und welche ist am kleinsten?"],
     ["Die größte Zahl ist zwölf.", "Die kleinste Zahl ist zwei."]),
    ("math", ["Was ist zwei plus drei?", "Und drei plus vier?"], ["Das ist fünf.", "Das ist sieben."]),
    ("math", ["Was ist zehn minus vier?", "Und zehn minus sieben?"], ["Das ist sechs.", "Das ist drei."]),
    ("coding", ["Wie heißt das Wort für eins in Python? Schreibe print(1).", "Und für zwei?"],
     ["print(1)", "print(2)"]),
    ("coding", ["Schreibe eine Zeile, die drei ausgibt.", "Und eine, die vier ausgibt?"],
     ["print(3)", "print(4)"]),
    ("extraction", ["Nenne das Tier im Satz: Der Vogel singt im Wald.", "Wo singt er?"],
     ["Das Tier ist der Vogel.", "Er singt im Wald."]),
    ("extraction", ["Nenne den Ort im Satz: Die Oma kocht im Haus.", "Wer kocht dort?"],
     ["Der Ort ist im Haus.", "Die Oma kocht dort."]),
    ("stem", ["Welcher Artikel passt zu Zeitung?", "Und zu Mädchen?"], ["die Zeitung.", "das Mädchen."]),
    ("stem", ["Welcher Artikel passt zu Freiheit?", "Und zu Frühling?"], ["die Freiheit.", "der Frühling."]),
    ("humanities", ["Konjugiere spielen mit du.", "Und mit wir?"], ["du spielst.", "wir spielen."]),
    ("humanities", ["Konjugiere lachen mit ich.", "Und mit er?"], ["ich lache.", "er lacht."]),
]


def mtbench_questions() -> list[dict]:
    """Sixteen two-turn questions, two per MT-Bench category, each with a two-turn reference."""
    return [{"question_id": i + 1, "category": c, "turns": list(t), "reference": list(r)}
            for i, (c, t, r) in enumerate(_MT)]
