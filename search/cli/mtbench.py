"""``merge-search mtbench run|rescore|compare``: MT-Bench(-de) answers, judging, scores and comparisons.

``run`` answers with a saved Hugging Face folder, a mergekit recipe YAML (merged in memory, the same merge the
search scores) or an OpenAI-compatible endpoint URL (``--endpoint-model`` names the model there); see
:func:`search.stages.mtbench.chat_model`. Settings come from the ``mtbench:`` section of ``--config`` with
command-line flags on top; the stage itself lives in :mod:`objectives.mtbench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from objectives.errors import UserError
from objectives.mtbench.compare import bar_chart, comparison_table, load_scores
from objectives.mtbench.questions import load_questions
from objectives.mtbench.run import OUTPUT_NAMES, run_mtbench, write_json
from objectives.mtbench.scores import compute_scores, load_judge_replies
from search.cli import types
from search.merge import Recipe
from search.preflight import local_models, output_problems, raise_problems
from search.stages.mtbench import chat_model, mtbench_config
from search.writelock import writer_lock

__all__ = ["register"]

# flag dest -> (section path in the mtbench config)
_OVERRIDES = {
    "questions": ("questions",), "language": ("language",), "max_new_tokens": ("max_new_tokens",),
    "batch_size": ("batch_size",), "limit": ("limit",), "seed": ("seed",), "device": ("device",),
    "chat_template": ("chat_template",), "judge": ("judge", "backend"), "judge_url": ("judge", "base_url"), "judge_model": ("judge", "model"),
    "judge_api_key_env": ("judge", "api_key_env"), "judge_prompts": ("judge", "prompts"),
    "judge_concurrency": ("judge", "concurrency"), "judge_retries": ("judge", "retries"),
    "judge_timeout": ("judge", "timeout_s"), "judge_backoff": ("judge", "backoff_s"),
    "judge_probe": ("judge", "probe"),
}


def _print_scores(scores: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(scores, indent=4, ensure_ascii=False))
        return
    if "label" in scores:
        print(f"*** {scores['label']} ***")
    def fmt(x: float | None) -> str:
        return "–" if x is None else f"{x:.4f}"

    for k in ("first_turn", "second_turn", "average"):
        print(f"{k:>12}: {fmt(scores[k])}")
    for c, v in scores["categories"].items():
        print(f"{c:>12}: {fmt(v)}")
    n = scores["counts"]
    print(f"{'rated':>12}: {n['first_turn']} + {n['second_turn']} judgments, unparsed: "
          f"{n['unparsed_first_turn']} + {n['unparsed_second_turn']}")


def _overrides(args: argparse.Namespace) -> dict:
    """The flags given, as :func:`search.stages.mtbench.mtbench_config` overrides."""
    out: dict = {"judge": {}}
    for dest, path in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is not None:
            (out if len(path) == 1 else out["judge"])[path[-1]] = value
    return out


def _recipe(source: str | None) -> Recipe | None:
    """The recipe ``--model`` names (a ``.yaml`` file), parsed and validated once; None for anything else."""
    if source and not source.startswith(("http://", "https://")) and Path(source).is_file() \
            and Path(source).suffix in (".yaml", ".yml"):
        return Recipe.from_file(source)
    return None


def _inputs(source: str | None, recipe: Recipe | None) -> list[str]:
    """The local model folders ``--model`` reads (a folder, or the models of its ``recipe``)."""
    if not source or source.startswith(("http://", "https://")):
        return []
    if recipe is not None:
        return local_models(recipe.referenced_models())
    return [source]


def cmd_run(args: argparse.Namespace) -> int:
    cfg = mtbench_config(args.config, _overrides(args))
    if (args.model is None) == (args.answers is None):
        raise UserError("mtbench run: pass exactly one of --model SOURCE or --answers FILE")
    if args.model and args.model.startswith(("http://", "https://")) and not args.endpoint_model:
        raise UserError(f"--model {args.model!r} is an endpoint: also pass --endpoint-model NAME (the model there)")
    name = args.name or (Path(args.model).stem if args.model and not args.model.startswith("http") else
                         args.endpoint_model or "answers")
    recipe = _recipe(args.model)
    problems = output_problems(args.out, what="--out", inputs=_inputs(args.model, recipe), own=OUTPUT_NAMES)
    problems += [f"--out {args.out!r} would overwrite the input {str(f)!r}: choose another --out"
                 for f in (cfg.questions, args.answers) if f and Path(f).is_file()
                 and Path(f).resolve().parent == Path(args.out).resolve() and Path(f).name in OUTPUT_NAMES]
    raise_problems(problems, "mtbench run")
    model = chat_model(recipe or args.model, cfg, endpoint_model=args.endpoint_model,
                       endpoint_api_key_env=args.endpoint_api_key_env, merge_seed=args.merge_seed) \
        if args.model else None
    with writer_lock(args.out):
        scores = run_mtbench(cfg, args.out, model=model, model_id=name, answers_path=args.answers)
    _print_scores(scores, args.json)
    print(f"wrote {args.out}/answers.jsonl, judge-replies.json, scores.json", file=sys.stderr)
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    if args.out:
        raise_problems(output_problems(args.out, what="--out", inputs=[args.replies, args.questions], file=True),
                       "mtbench rescore")
    scores = compute_scores(load_judge_replies(args.replies), load_questions(args.questions))
    if args.out:
        write_json(Path(args.out), scores)
    _print_scores(scores, args.json)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    names = args.names or [Path(p).parent.name or Path(p).stem for p in args.scores]
    if len(names) != len(args.scores):
        raise UserError(f"--names needs one name per scores file ({len(args.scores)}), but got {len(names)}")
    base = names.index(args.baseline) if args.baseline in names else None
    if base is None:
        if args.baseline is not None and not args.baseline.isdigit():
            raise UserError(f"--baseline {args.baseline!r} is not one of the names {names}")
        base = int(args.baseline or 0)
        if not 0 <= base < len(names):
            raise UserError(f"--baseline index must be in [0, {len(names) - 1}], but got {base}")
    all_scores = [load_scores(p) for p in args.scores]
    table = comparison_table(all_scores, names, base)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    png = bar_chart(all_scores, names, out.with_suffix(".png"), title=args.title)
    print(f"wrote {out.with_suffix('.md')} and {png}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("mtbench", help="MT-Bench(-de): answer, judge, score, rescore and compare",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mtbench_command", metavar="{run,rescore,compare}", required=True)

    r = sub.add_parser("run", help="answer the questions with a model, judge both turns, write scores")
    r.add_argument("--model", help="model folder, mergekit recipe .yaml, or OpenAI-compatible base URL")
    r.add_argument("--answers", help="judge an existing FastChat answers .jsonl instead of generating")
    r.add_argument("--name", help="model id written into the answers (default: from --model)")
    r.add_argument("--config", help="run config YAML; its `mtbench:` section is used")
    r.add_argument("--out", required=True, help="output folder (answers.jsonl, judge-replies.json, scores.json)")
    r.add_argument("--questions", help="FastEval .json, FastChat .jsonl or Hugging Face dataset id")
    r.add_argument("--language", help="judge prompt language (de, en); default de")
    r.add_argument("--max-new-tokens", type=int, help="answer length cap (default 1024)")
    r.add_argument("--batch-size", type=int, help="generation batch size")
    r.add_argument("--limit", type=int, help="only the first N questions (smoke runs)")
    r.add_argument("--seed", type=types.seed, help="sampling seed")
    r.add_argument("--chat-template", help="template for a model whose tokenizer has none: chatml, a Jinja "
                   "template or a .jinja file")
    r.add_argument("--device", type=types.device, help="cpu, cuda or cuda:N")
    r.add_argument("--merge-seed", type=types.seed, default=0, help="DARE seed when --model is a recipe")
    r.add_argument("--endpoint-model", help="model name at the endpoint when --model is a URL")
    r.add_argument("--endpoint-api-key-env", default="OPENAI_API_KEY", help="env var holding the endpoint's key")
    r.add_argument("--judge", choices=["openai", "hf", "standin"], help="judge backend (default standin)")
    r.add_argument("--judge-url", help="judge base URL (openai backend), e.g. http://host:8000/v1")
    r.add_argument("--judge-model", help="judge model name (openai) or folder (hf)")
    r.add_argument("--judge-api-key-env", help="NAME of the env var with the judge API key")
    r.add_argument("--judge-prompts", help="FastEval/FastChat judge prompts file instead of the built-in ones")
    r.add_argument("--judge-concurrency", type=int, help="requests in flight")
    r.add_argument("--judge-retries", type=int, help="retries on 429/5xx/timeouts/garbage")
    r.add_argument("--judge-timeout", type=float, help="seconds per request")
    r.add_argument("--judge-backoff", type=float, help="first retry delay in seconds (doubles each retry)")
    r.add_argument("--no-judge-probe", dest="judge_probe", action="store_false", default=None,
                   help="skip the one request that checks the judge answers before any answer is generated")
    r.add_argument("--json", action="store_true", help="print the scores as JSON")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("rescore", help="re-score a FastEval judge-replies.json and print the scores")
    s.add_argument("replies", help="judge-replies.json (FastEval layout)")
    s.add_argument("--questions", required=True, help="the question file the replies belong to")
    s.add_argument("--out", help="also write the scores JSON here")
    s.add_argument("--json", action="store_true", help="print the scores as JSON")
    s.set_defaults(func=cmd_rescore)

    c = sub.add_parser("compare", help="side-by-side table with deltas in percent, and a category bar chart")
    c.add_argument("scores", nargs="+", help="scores.json files")
    c.add_argument("--names", nargs="+", help="one column name per scores file (default: parent folder names)")
    c.add_argument("--baseline", help="name or index of the baseline column (default: the first)")
    c.add_argument("--out", default="mtbench-compare", help="output prefix: writes PREFIX.md and PREFIX.png")
    c.add_argument("--title", default="MT-Bench", help="chart title")
    c.set_defaults(func=cmd_compare)
