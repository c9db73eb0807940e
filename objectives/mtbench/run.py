"""The MT-Bench stage end to end: questions -> answers -> judge replies -> scores, written to one folder.

``OUT/answers.jsonl`` (FastChat model_answer), ``OUT/judge-replies.json`` (FastEval), ``OUT/scores.json``
(FastEval's shape plus ``counts``; plus ``label`` when the stand-in judge graded). ``OUT/cache/`` keeps every
finished answer and judge reply as it arrives, so a run that was interrupted resumes where it stopped
(:mod:`objectives.mtbench.cache`; delete the folder to start afresh).
"""

from __future__ import annotations

import hashlib
import json
import os
import logging
from pathlib import Path

from objectives.errors import UserError
from objectives.mtbench.cache import ReplyCache
from objectives.mtbench.config import MTBenchConfig
from objectives.mtbench.generate import ChatModel, generate_answers, read_answers, write_answers
from objectives.mtbench.judges import judge_answers, judge_scope, make_judge
from objectives.mtbench.prompts import builtin_prompts, load_prompts
from objectives.mtbench.questions import load_questions
from objectives.mtbench.questions import source_problems as question_problems
from objectives.mtbench.scores import compute_scores
from objectives.templates import template_tokens

__all__ = ["ANSWERS_FILE", "OUTPUT_NAMES", "PROMPT_FILE", "REPLIES_FILE", "SCORES_FILE", "rated", "run_mtbench", "write_json"]

ANSWERS_FILE = "answers.jsonl"
REPLIES_FILE = "judge-replies.json"
SCORES_FILE = "scores.json"
PROMPT_FILE = "rendered-prompt.txt"
CACHE_DIR = "cache"
OUTPUT_NAMES = {ANSWERS_FILE, REPLIES_FILE, SCORES_FILE, PROMPT_FILE, CACHE_DIR}  # everything a run writes into its folder

log = logging.getLogger("merge_search.mtbench")


def write_json(path: Path, data) -> None:
    """``data`` as JSON in ``path``, replaced whole (a temporary file and one rename): never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_mtbench(cfg: MTBenchConfig, out_dir: str | Path, *, model: ChatModel | None = None, model_id: str = "model",
                answers_path: str | Path | None = None) -> dict:
    """Answer (with ``model``) or reuse ``answers_path``, judge, score; returns the scores dict."""
    for problem in question_problems(cfg.questions):
        raise UserError(problem)
    if (model is None) == (answers_path is None):
        raise UserError("mtbench run needs exactly one of a model to answer with or an existing answers file")
    out = Path(out_dir)
    questions = load_questions(cfg.questions, cfg.limit)
    prompts = load_prompts(cfg.judge.prompts) if cfg.judge.prompts else builtin_prompts(cfg.language)
    judge = make_judge(cfg.judge)  # fail on a bad judge before spending time on answers
    if cfg.judge.probe and hasattr(judge, "probe"):
        judge.probe()
    if model is not None:
        fingerprint = getattr(model, "fingerprint", None)
        cache = ReplyCache(out / CACHE_DIR / "answers.jsonl", fingerprint) if fingerprint else None
        answers = generate_answers(model, questions, cfg, desc=f"{model_id} :: MT-Bench answers", cache=cache)
        write_answers(out / ANSWERS_FILE, answers, model_id)
        _save_rendered_prompt(model, questions, answers, cfg, out)
    else:
        answers = read_answers(answers_path)
    missing = [q.question_id for q in questions if q.question_id not in answers]
    if missing:
        log.warning("%d question(s) have no answer and are not judged: %s", len(missing), missing[:10])
    # The stand-in judge is instant and reads question fields the cache key does not cover: never cached.
    cache = None if cfg.judge.backend == "standin" else ReplyCache(out / CACHE_DIR / "judgments.jsonl",
                                                                   judge_scope(cfg.judge))
    replies = judge_answers(judge, questions, answers, prompts, cache=cache)
    write_json(out / REPLIES_FILE, replies)
    scores = compute_scores(replies, questions) | {"measured_with": measured_with(cfg, questions, prompts)}
    write_json(out / SCORES_FILE, scores)
    if not rated(scores):
        n = scores["counts"]
        raise UserError(f"MT-Bench {model_id}: not one judgment could be rated ({len(replies)} replies, "
                        f"{n['unparsed_first_turn'] + n['unparsed_second_turn']} without a rating from 1 to 10; see "
                        f"{out / REPLIES_FILE}): check that the judge answers (mtbench.judge) and run again")
    return scores


def measured_with(cfg: MTBenchConfig, questions, prompts: dict) -> dict:
    """What a score depends on besides the model (``scores.json``'s ``measured_with``): the judge (backend and
    model), the judge prompt set (its file or the built-in language, and a digest of its text) and the
    question set (count and a digest of the questions' ids and turns). Scores measured with different ones are
    not comparable (:func:`objectives.mtbench.compare.comparison_table` says so)."""
    def digest(data) -> str:
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]

    judge = cfg.judge.backend + (f":{cfg.judge.model}" if cfg.judge.model else "")
    return {"judge": judge,
            "prompts": (Path(cfg.judge.prompts).name if cfg.judge.prompts else f"built-in ({cfg.language})")
                       + f" {digest(prompts)}",
            "questions": f"{len(questions)} questions {digest([[q.question_id, q.turns] for q in questions])}"}


def _save_rendered_prompt(model, questions, answers: dict, cfg: MTBenchConfig, out: Path) -> None:
    """``PROMPT_FILE``: the first question's second-turn prompt exactly as a local model saw it (its chat
    template, the first answer in context) and where its turns stop; endpoints render their own prompts."""
    if not hasattr(model, "render") or not questions or questions[0].question_id not in answers:
        return
    q = questions[0]
    conv = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
        {"role": "user", "content": q.turns[0]}, {"role": "assistant", "content": answers[q.question_id][0]},
        {"role": "user", "content": q.turns[1]}]
    stops = [model.tok.convert_ids_to_tokens(i) for i in model.eos]
    markers = model.tok.convert_ids_to_tokens(template_tokens(model.tok)) or "none (spelled in ordinary tokens)"
    header = (f"# question {q.question_id}, turn 2, as rendered by the model's chat template\n"
              f"# template markers that are single added tokens: {markers}\n"
              f"# a turn stops at the tokens {stops}" + (f" or the text {list(model.stop_strings)}"
                                                           if model.stop_strings else "") + "\n")
    (out / PROMPT_FILE).write_text(header + model.render(conv), encoding="utf-8")


def rated(scores: dict) -> bool:
    """Whether a ``scores.json`` holds at least one rated judgment (a run whose judge never answered does not)."""
    counts = scores.get("counts") or {}
    return counts.get("first_turn", 0) + counts.get("second_turn", 0) > 0
