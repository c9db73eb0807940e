"""Judge prompts: the project's own templates (language a parameter) or a FastEval/FastChat prompts file.

A prompt set maps the four MT-Bench single-grading prompt names to ``{"system_prompt", "prompt_template"}``:

- ``single-v1``: turn 1, no reference;       ``single-math-v1``: turn 1 with a reference answer;
- ``single-v1-multi-turn``: turn 2 (the whole conversation shown, the second answer graded);
- ``single-math-v1-multi-turn``: turn 2 with reference answers.

Templates are ``str.format`` strings with the fields FastChat uses (``question``, ``answer``,
``ref_answer_1``, ``question_1``, ``answer_1``, ``question_2``, ``answer_2``, ``ref_answer_2``), so FastEval's
and FastChat's published files plug in unchanged. The judge must answer with ``[[rating]]`` (1-10).
"""

from __future__ import annotations

import json
from pathlib import Path

from objectives.errors import UserError
from objectives.mtbench.questions import Question

__all__ = ["PROMPT_NAMES", "builtin_prompts", "judge_messages", "load_prompts", "prompt_name"]

PROMPT_NAMES = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")

# Per-language strings of the one set of templates below. Add a language by adding a dict here.
STRINGS: dict[str, dict[str, str]] = {
    "de": {
        "system": "Du bist ein unparteiischer und gründlicher Gutachter für Antworten von KI-Assistenten.",
        "instruction": "Aufgabe",
        "task_single": "Beurteile die Antwort, die ein KI-Assistent auf die unten stehende Nutzerfrage gegeben hat.",
        "task_multi": (
            "Unten steht ein Gespräch zwischen einem Nutzer und einem KI-Assistenten. Beurteile nur die "
            "Antwort des Assistenten auf die zweite Nutzerfrage; der Rest des Gesprächs ist Kontext."
        ),
        "criteria": (
            "Berücksichtige Nützlichkeit, Relevanz, Richtigkeit, Tiefe, Kreativität und Detailgrad, und ob die "
            "Antwort in natürlichem, korrektem Deutsch geschrieben ist."
        ),
        "criteria_ref": (
            "Es zählen vor allem Richtigkeit und Nützlichkeit. Vergleiche die Antwort mit der Referenzantwort "
            "und benenne jeden Fehler, den du findest. Die Antwort soll in korrektem Deutsch geschrieben sein."
        ),
        "output": (
            "Begründe dein Urteil zuerst in wenigen sachlichen Sätzen. Gib danach eine Note von 1 (sehr schlecht) "
            "bis 10 (hervorragend) genau in diesem Format an: \"[[Note]]\", zum Beispiel \"Note: [[6]]\"."
        ),
        "question": "Frage",
        "answer": "Antwort des Assistenten",
        "reference": "Referenzantwort",
        "user": "Nutzer",
        "assistant": "Assistent",
        "conversation": "Gespräch",
        "reference_conversation": "Referenzantworten",
        "begin": "Anfang",
        "end": "Ende",
    },
    "en": {
        "system": "You are an impartial and thorough reviewer of answers written by AI assistants.",
        "instruction": "Task",
        "task_single": "Assess the answer an AI assistant gave to the user question shown below.",
        "task_multi": (
            "Below is a conversation between a user and an AI assistant. Assess only the assistant's answer "
            "to the second user question; the rest of the conversation is context."
        ),
        "criteria": "Consider helpfulness, relevance, accuracy, depth, creativity and level of detail.",
        "criteria_ref": (
            "Correctness and helpfulness matter most. Compare the answer with the reference answer and point "
            "out every mistake you find."
        ),
        "output": (
            "First justify your verdict in a few factual sentences. Then give a grade from 1 (very poor) to 10 "
            "(excellent) in exactly this format: \"[[grade]]\", for example \"Grade: [[6]]\"."
        ),
        "question": "Question",
        "answer": "Assistant's answer",
        "reference": "Reference answer",
        "user": "User",
        "assistant": "Assistant",
        "conversation": "Conversation",
        "reference_conversation": "Reference answers",
        "begin": "Start",
        "end": "End",
    },
}


def _block(s: dict[str, str], label: str, body: str) -> str:
    return f"[{s['begin']}: {label}]\n{body}\n[{s['end']}: {label}]"


def _conversation(s: dict[str, str], a1: str, a2: str) -> str:
    return (
        f"### {s['user']}:\n{{question_1}}\n\n### {s['assistant']}:\n{a1}\n\n"
        f"### {s['user']}:\n{{question_2}}\n\n### {s['assistant']}:\n{a2}"
    )


def _template(s: dict[str, str], *, reference: bool, multi_turn: bool) -> str:
    head = " ".join(
        [s["task_multi"] if multi_turn else s["task_single"], s["criteria_ref"] if reference else s["criteria"],
         s["output"]]
    )
    parts = [f"[{s['instruction']}]\n{head}"]
    if multi_turn:
        if reference:
            parts.append(_block(s, s["reference_conversation"], _conversation(s, "{ref_answer_1}", "{ref_answer_2}")))
        parts.append(_block(s, s["conversation"], _conversation(s, "{answer_1}", "{answer_2}")))
    else:
        parts.append(f"[{s['question']}]\n{{question}}")
        if reference:
            parts.append(_block(s, s["reference"], "{ref_answer_1}"))
        parts.append(_block(s, s["answer"], "{answer}"))
    return "\n\n".join(parts)


def builtin_prompts(language: str = "de") -> dict[str, dict[str, str]]:
    """The project's own judge prompts in ``language`` (one template set, per-language strings)."""
    if language not in STRINGS:
        raise UserError(f"mtbench.language must be one of {sorted(STRINGS)}, but got {language!r}")
    s = STRINGS[language]
    return {
        name: {
            "system_prompt": s["system"],
            "prompt_template": _template(s, reference="math" in name, multi_turn="multi-turn" in name),
        }
        for name in PROMPT_NAMES
    }


def load_prompts(path: str | Path) -> dict[str, dict[str, str]]:
    """Read FastEval's ``judge_prompts*.json`` (object by name) or FastChat's ``judge_prompts.jsonl``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"judge prompts file {str(p)!r} does not exist: pass a FastEval .json or FastChat .jsonl")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".jsonl":
            data = {r["name"]: r for r in (json.loads(line) for line in text.splitlines() if line.strip())}
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{p}: not a FastEval/FastChat judge prompts file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected an object keyed by prompt name, got {type(data).__name__}")
    out = {}
    for name in PROMPT_NAMES:
        rec = data.get(name)
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt_template"), str):
            raise UserError(f"{p}: prompt {name!r} is missing or has no `prompt_template`; all of {PROMPT_NAMES} are needed")
        out[name] = {"system_prompt": str(rec.get("system_prompt", "")), "prompt_template": rec["prompt_template"]}
    return out


def prompt_name(question: Question, turn: int) -> str:
    """Which template grades ``turn`` (0 or 1) of ``question``: reference-guided when it has a reference."""
    base = "single-math-v1" if question.reference else "single-v1"
    return base + ("-multi-turn" if turn == 1 else "")


def judge_messages(prompts: dict[str, dict[str, str]], question: Question, answers: list[str] | tuple[str, ...],
                   turn: int) -> list[dict[str, str]]:
    """The chat (system + user) that asks the judge to grade ``answers[turn]`` of ``question``."""
    rec = prompts[prompt_name(question, turn)]
    fields = {}
    if question.reference:
        fields = {"ref_answer_1": question.ref(0), "ref_answer_2": question.ref(1)}
    if turn == 0:
        fields |= {"question": question.turns[0], "answer": answers[0]}
    else:
        fields |= {"question_1": question.turns[0], "question_2": question.turns[1],
                   "answer_1": answers[0], "answer_2": answers[1]}
    try:
        user = rec["prompt_template"].format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(
            f"judge prompt {prompt_name(question, turn)!r}: template uses an unknown field {err}; allowed: "
            f"{sorted(fields)}"
        ) from None
    msgs = [{"role": "system", "content": rec["system_prompt"]}] if rec["system_prompt"] else []
    return msgs + [{"role": "user", "content": user}]
