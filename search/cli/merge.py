"""``merge-search merge`` (a recipe through the in-memory path, saved) and ``merge-search hash``."""

from __future__ import annotations

import argparse

from search.cli import types
from search.merge import Recipe, hash_model_dir, merge_to_dir
from search.merge.export import SIDECAR_FILE
from search.preflight import local_models, output_problems, raise_problems

__all__ = ["register"]


def _merge(args: argparse.Namespace) -> int:
    recipe = Recipe.from_file(args.recipe)  # parsed and validated once: merge_to_dir re-merges this value
    models = recipe.referenced_models()
    raise_problems(output_problems(args.out, what="--out", inputs=local_models(models), marker=SIDECAR_FILE),
                   "merge")
    meta = merge_to_dir(recipe, args.out, seed=args.seed, device=args.device, threads=args.threads)
    print(f"merged {args.recipe} (seed {meta['seed']}, {meta['device']}) -> {args.out}")
    print(f"weights_sha256 {meta['weights_sha256']}")
    return 0


def _hash(args: argparse.Namespace) -> int:
    print(hash_model_dir(args.model_dir))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge a mergekit YAML recipe exactly as trials do and save it (+ merge.json with the hash)",
        description="Run the in-memory merge path that trials use and save the model (safetensors, config, "
                    "tokenizer) with DIR/merge.json: seed, device, versions, recipe and weights_sha256. "
                    "Stock `mergekit-yaml RECIPE OUT --random-seed N` on the same device gives the same hash.",
    )
    p.add_argument("recipe", help="mergekit YAML recipe (what `mergekit-yaml` reads)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=types.seed, default=0, help="random seed for DARE masks (default 0)")
    p.add_argument("--device", type=types.device, default="cpu", help="cpu or cuda; masks depend on it (default cpu)")
    p.add_argument("--threads", type=types.positive_int, default=None,
                   help="torch CPU threads for the merge; CPU bits depend on it, so pass a trial's merge_threads "
                        "to reproduce it (default: torch's current count)")
    p.set_defaults(func=_merge)

    h = subparsers.add_parser(
        "hash",
        help="print weights_sha256 of a saved model folder",
        description="SHA-256 over all tensors of MODEL_DIR/*.safetensors in sorted name order (name UTF-8, "
                    "then raw bytes as stored): the same figure trials record as weights_sha256.",
    )
    h.add_argument("model_dir", help="a folder with *.safetensors (merge-search merge, mergekit-yaml, ...)")
    h.set_defaults(func=_hash)
