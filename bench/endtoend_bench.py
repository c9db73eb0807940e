"""Does the pipeline reach its goal? A whole run per search seed, judged on the final measure.

For each seed, ``merge-search run`` on the config with only ``seed:`` changed (run folders
``results/bench-endtoend/<config>-seed<k>``, reused when finished, so a second call only prints), then per seed:

* winner vs best source vs best hand recipe on the log-likelihood test tasks, the generative test tasks and the
  chat evaluation (the MT-Bench stage: final questions, never seen by the search);
* merge vs merge+DPO on the chat evaluation, the model the report says to ship;
* DPO: held-out preference accuracy and chosen-answer log-likelihood before -> after;
* wall time of the run.

    .venv/bin/python bench/endtoend_bench.py                         # configs/demo.yaml, seeds 0 1 2
    .venv/bin/python bench/endtoend_bench.py --config configs/seedlike.yaml --seeds 0
    .venv/bin/python bench/endtoend_bench.py --from dpo                # after changing the DPO settings

Target (issue 25): the winner above every source and the hand recipe on all three measures, and merge+DPO >=
merge on the chat evaluation, in every seed. Needs the config's world built first (see the config's header).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.rundir import RunDir  # noqa: E402
from search.stages.heldout_report import HeldoutReport  # noqa: E402
from search.stages.verdict import MERGE, MERGE_DPO, chat_scores, kind_means, ship_decision  # noqa: E402


def _run(config: Path, seed: int, out: Path, from_stage: str | None = None) -> None:
    """Run the pipeline for ``seed`` into ``out`` (resumed/skipped when done; ``from_stage``: re-run from there,
    e.g. ``dpo`` after changing the DPO settings)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["seed"] = seed
    data["name"] = f"{data.get('name', config.stem)}-seed{seed}"
    cfg = out.parent / f"{out.name}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cli = Path(sys.executable).parent / "merge-search"  # the console script beside this interpreter
    subprocess.run([str(cli), "run", str(cfg), "--out", str(out), *(["--from", from_stage] if from_stage else [])],
                   cwd=ROOT, check=True)


def _seconds(run: RunDir) -> float:
    """The run's wall time: the sum of its stages' recorded seconds (a reused or resumed run counts what each
    stage took when it ran)."""
    return sum(json.loads(p.read_text(encoding="utf-8")).get("seconds", 0) for p in run.root.glob("stages/*.json"))


def _row(run: RunDir, seed: int) -> dict:
    heldout = HeldoutReport.load(run.heldout_json)
    winner = run.best_record().number
    models = heldout.models
    trial = next(m for m in models.values() if m.kind == "trial" and m.trial == winner)
    row: dict = {"seed": seed, "seconds": round(_seconds(run))}
    name = next(n for n, m in models.items() if m is trial)
    for kind in ("loglikelihood", "generation"):
        means = kind_means(heldout, kind, trial)
        if name not in means:
            continue
        row[kind] = {"winner": means[name],
                     "best_source": max((v for n, v in means.items() if models[n].kind == "source"), default=None),
                     "recipe": max((v for n, v in means.items() if models[n].kind == "recipe"), default=None)}
    chat = chat_scores(run)
    row["chat"] = {"winner": chat.scores.get(MERGE), "best_source": max(chat.of("source").values(), default=None),
                   "recipe": max(chat.of("recipe").values(), default=None), "merge_dpo": chat.scores.get(MERGE_DPO)}
    metrics = json.loads(run.dpo.metrics.read_text(encoding="utf-8")) if run.dpo.metrics.is_file() else {}
    before, after = metrics.get("heldout_before", {}), metrics.get("heldout_after", {})
    row["dpo"] = {k: (before.get(k), after.get(k)) for k in ("pref_accuracy", "chosen_logp")}
    ship = ship_decision(run)
    row["ship"] = ship.model if ship else None
    return row


def _f(x, fmt=".3f") -> str:
    return "-" if x is None else f"{x:{fmt}}"


def _ok(winner, *others) -> str:
    others = [o for o in others if o is not None]
    return "yes" if winner is not None and others and all(winner > o for o in others) else "NO"


def table(rows: list[dict]) -> str:
    lines = ["| seed | log-lik. test: winner / best source / recipe | generation test: winner / best source / recipe "
             "| chat: merge / best source / recipe / merge+DPO | winner above all 3 | DPO >= merge | pref. acc. | chosen logp "
             "| ship | wall |", "|---|---|---|---|---|---|---|---|---|---:|"]
    for r in rows:
        ll, gen, chat, dpo = r.get("loglikelihood", {}), r.get("generation", {}), r["chat"], r["dpo"]
        above = all(_ok(m.get("winner"), m.get("best_source"), m.get("recipe")) == "yes" for m in (ll, gen) if m) \
            and _ok(chat["winner"], chat["best_source"], chat["recipe"]) == "yes"
        dpo_ok = chat["merge_dpo"] is not None and chat["winner"] is not None and chat["merge_dpo"] >= chat["winner"]
        pa, cl = dpo["pref_accuracy"], dpo["chosen_logp"]
        lines.append(
            f"| {r['seed']} | {_f(ll.get('winner'))} / {_f(ll.get('best_source'))} / {_f(ll.get('recipe'))} "
            f"| {_f(gen.get('winner'))} / {_f(gen.get('best_source'))} / {_f(gen.get('recipe'))} "
            f"| {_f(chat['winner'], '.2f')} / {_f(chat['best_source'], '.2f')} / {_f(chat['recipe'], '.2f')} "
            f"/ {_f(chat['merge_dpo'], '.2f')} "
            f"| {'yes' if above else 'NO'} | {'yes' if dpo_ok else 'NO'} | {_f(pa[0])} -> {_f(pa[1])} "
            f"| {_f(cl[0], '.2f')} -> {_f(cl[1], '.2f')} | {r['ship']} | {r['seconds']} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench-endtoend")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--from", dest="from_stage", help="re-run every seed's run from this stage (e.g. dpo)")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        out = args.out / f"{args.config.stem}-seed{seed}"
        _run(args.config.resolve(), seed, out, args.from_stage)
        rows.append(_row(RunDir(out), seed))
        print(table(rows[-1:]), flush=True)
    print(f"\n{args.config.name}, seeds {args.seeds}:\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
