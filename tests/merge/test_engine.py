"""The in-memory merge: bit-identical to stock ``mergekit-yaml``, reseeded, guarded, exported, worth doing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mergekit.config import MergeConfiguration

from objectives.errors import UserError
from objectives.schema import validate
from search.merge import hash_model_dir, weights_sha256
from search.merge import MergeError, ResidentMerger, merge_to_dir
from search.merge import SpaceConfig, to_merge_config

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"


def recipe(world, method="dare_ties", density=(0.6, 0.6, 0.6), weight=(0.3, 0.3, 0.4), dtype="float32",
           **shared) -> dict:
    models = [{"model": str(world.base)}] + [
        {"model": str(p), "parameters": {"density": d, "weight": w}}
        for p, d, w in zip(world.experts.values(), density, weight)
    ]
    return {"models": models, "merge_method": method, "base_model": str(world.base), "dtype": dtype,
            **({"parameters": shared} if shared else {})}


@pytest.fixture(scope="module")
def merger(world):
    return ResidentMerger(str(world.base), [str(p) for p in world.experts.values()], dtype="float32")


def stock_hash(rec: dict, out: Path, seed: int) -> str:
    """Hash of what the real ``mergekit-yaml`` executable writes for ``rec`` (CPU)."""
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(rec))
    subprocess.run([str(MERGEKIT_YAML), str(path), str(out), "--random-seed", str(seed)], check=True,
                   capture_output=True)
    return hash_model_dir(out)


def test_plan_in_memory_workaround_still_needed(world):
    """Fails loudly when mergekit changes: then revisit ``search.merge.plan_merge_tasks``."""
    from mergekit.architecture import get_architecture_info
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner
    from transformers import AutoConfig

    cfg = MergeConfiguration.model_validate(recipe(world))
    opts = MergeOptions()
    planner = MergePlanner(cfg, get_architecture_info(cfg, opts), options=opts,
                           out_model_config=AutoConfig.from_pretrained(world.base))
    with pytest.raises(TypeError, match="abstract"):
        planner.plan_in_memory()  # if this passes, mergekit fixed it: use plan_in_memory() instead
    assert isinstance(planner._tensors, list) and planner._tensors, "mergekit renamed MergePlanner._tensors"


@pytest.mark.parametrize("name, rec, seed", [
    ("dare_ties d<1 bf16 int8_mask", {"dtype": "bfloat16", "int8_mask": True}, 0),
    ("dare_ties d=1 mixed", {"density": (1.0, 0.5, 1.0), "weight": (0.7, 0.6, 0.5)}, 11),
    ("ties", {"method": "ties", "density": (0.5, 0.7, 0.9)}, 3),
    ("task_arithmetic", {"method": "task_arithmetic", "weight": (0.6, 0.6, 0.6)}, 5),
])
def test_in_memory_merge_equals_stock_mergekit_yaml(world, merger, tmp_path, name, rec, seed):
    rec = recipe(world, **rec)
    res = merger.merge(rec, seed=seed)
    assert res.weights_sha256 == weights_sha256(res.model.state_dict())
    assert res.model.dtype == getattr(torch, rec["dtype"])
    assert stock_hash(rec, tmp_path / "stock", seed) == res.weights_sha256, name


def test_layer_grouped_filtered_candidate_equals_stock_mergekit_yaml(world, merger, tmp_path):
    """A trial of a space with layer_groups (gradient lists) and filters, exported as its YAML recipe."""
    from search.merge import recipe_yaml

    sp = validate(SpaceConfig, {
        "base_model": str(world.base), "models": [{"model": str(p), "name": s} for s, p in world.experts.items()],
        "dtype": "float32", "parameters": {"int8_mask": True}, "layer_groups": 2, "filters": ["self_attn", "mlp"]},
        "space")
    params = {s.name: round(0.2 + 0.7 * ((i * 37) % 11) / 10, 3) for i, s in enumerate(sp.searched)}
    rec = yaml.safe_load(recipe_yaml(to_merge_config(sp, params)))
    assert isinstance(rec["models"][1]["parameters"]["density"], list)  # per filter, per layer group
    res = merger.merge(rec, seed=6)
    assert stock_hash(rec, tmp_path / "stock", 6) == res.weights_sha256


def test_tied_embeddings_hash_as_stock_mergekit_and_save_pretrained_write_them(world, tmp_path):
    """With tie_word_embeddings one storage has two names in the state dict but one in every saved file."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from search.merge import saved_tensors

    cfg = AutoConfig.from_pretrained(world.base)
    cfg.tie_word_embeddings = True
    tok = AutoTokenizer.from_pretrained(world.base)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg)
    paths = []
    for i in range(3):  # base + two "fine-tunes" (small noise)
        with torch.no_grad():
            model = AutoModelForCausalLM.from_config(cfg)
            model.load_state_dict(base.state_dict())
            for param in model.parameters() if i else ():
                param.add_(torch.randn_like(param) * 0.01)
        paths.append(tmp_path / f"m{i}")
        model.save_pretrained(paths[-1])
        tok.save_pretrained(paths[-1])
    rec = {"merge_method": "dare_ties", "base_model": str(paths[0]), "dtype": "float32",
           "models": [{"model": str(p), "parameters": {"density": 0.6, "weight": 0.5}} for p in paths[1:]]}
    res = ResidentMerger(str(paths[0]), [str(p) for p in paths[1:]], dtype="float32").merge(rec, seed=3)
    state = res.model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    assert set(state) - set(saved_tensors(res.model)) == {"lm_head.weight"}
    assert stock_hash(rec, tmp_path / "stock", 3) == res.weights_sha256
    side = merge_to_dir(rec, tmp_path / "ours", seed=3)  # checks its saved files against the in-memory hash
    assert side["weights_sha256"] == res.weights_sha256 == hash_model_dir(tmp_path / "ours")


def test_reseeded_before_every_merge(world, merger):
    a, b = recipe(world, density=(0.5, 0.5, 0.5)), recipe(world, density=(1.0, 0.3, 0.8))
    first = merger.merge(a, seed=1).weights_sha256
    other_seed = merger.merge(a, seed=2).weights_sha256
    merger.merge(b, seed=1)
    torch.rand(1000)  # an unrelated RNG draw between merges must not matter
    assert merger.merge(a, seed=1).weights_sha256 == first
    assert other_seed != first  # the DARE masks do depend on the seed


def test_source_cache_serves_later_merges_and_survives_in_place_edits(world):
    """Resident sources (Executor cached_values) change nothing in the weights, and an edited one is re-read."""
    models = [str(p) for p in world.experts.values()]
    plain = ResidentMerger(str(world.base), models, dtype="float32", cache_sources=False)
    merger = ResidentMerger(str(world.base), models, dtype="float32")
    recipes = [(recipe(world, density=(0.5, 0.7, 0.9)), 4), (recipe(world, method="ties"), 9)]
    expected = [plain.merge(r, seed=s).weights_sha256 for r, s in recipes]
    assert not plain._sources
    assert [merger.merge(r, seed=s).weights_sha256 for r, s in recipes] == expected
    n_tensors = len(merger.model.state_dict())
    assert len(merger._sources) == 4 * n_tensors  # base + three experts, loaded once and kept
    cached = dict(merger._sources)
    assert [merger.merge(r, seed=s).weights_sha256 for r, s in recipes] == expected
    assert all(merger._sources[k][0] is v[0] for k, v in cached.items())  # nothing was read again
    task, (value, _) = next((k, v) for k, v in merger._sources.items() if v[0] is not None)
    value.add_(1.0)  # as a merge method that edited its input in place would
    assert [merger.merge(r, seed=s).weights_sha256 for r, s in recipes] == expected
    assert merger._sources[task][0] is not value


def test_merge_never_mutates_the_given_config(world, merger):
    cfg = MergeConfiguration.model_validate(recipe(world))
    before = cfg.model_dump()
    res = merger.merge(cfg, seed=0)
    assert cfg.model_dump() == before and cfg.modules is None
    assert res.merge_config.model_dump() == before


def test_nan_candidate_fails_with_the_tensor_name_and_merger_stays_usable(world, merger):
    good = recipe(world, method="task_arithmetic")
    expected = merger.merge(good, seed=0).weights_sha256
    bad = recipe(world, method="task_arithmetic", weight=(float("inf"), 0.5, 0.5))
    with pytest.raises(UserError, match=r"models\[1\]\.parameters\.weight: inf is not a finite number"):
        merger.merge(bad, seed=0)  # a recipe given as data is refused before mergekit sees it
    with pytest.raises(MergeError, match=r"merged tensor '.*' has \d+ NaN/inf"):  # built in code: caught at merge
        merger.merge(MergeConfiguration.model_validate(bad), seed=0)
    assert merger.merge(good, seed=0).weights_sha256 == expected


def test_space_drives_the_merger(world):
    space = validate(SpaceConfig, {
        "base_model": str(world.base), "dtype": "float32", "parameters": {"int8_mask": True},
        "models": [{"model": str(p)} for p in world.experts.values()]}, "space")
    m = ResidentMerger.from_space(space)
    params = {s.name: 0.5 for s in space.searched}
    res = m.merge(to_merge_config(space, params), seed=4)
    assert len(res.weights_sha256) == 64 and res.tokenizer is not None
    with pytest.raises(UserError, match="did not load"):
        m.merge(recipe(world) | {"models": [{"model": str(world.root / "models/other")}]}, seed=0)


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_shape_or_architecture_mismatch_is_a_user_error_before_merging(world, tmp_path):
    from safetensors.torch import load_file, save_file

    odd = _copy_model(world.base, tmp_path / "odd")
    sd = load_file(odd / "model.safetensors")
    sd["model.norm.weight"] = torch.ones(64)
    save_file(sd, odd / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"tensor 'model.norm.weight' has shape \(64,\) vs \(128,\)"):
        ResidentMerger(str(world.base), [str(odd)])

    llama = _copy_model(world.base, tmp_path / "llama")
    cfg = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps(cfg | {"architectures": ["LlamaForCausalLM"],
                                                         "model_type": "llama"}))
    with pytest.raises(UserError, match="architecture"):
        ResidentMerger(str(world.base), [str(llama)])
    with pytest.raises(UserError, match="does not exist"):
        ResidentMerger(str(world.base), [str(tmp_path / "missing")])


def test_merge_command_exports_what_stock_mergekit_writes(world, tmp_path, capsys):
    from search.cli import main

    rec = yaml.safe_load((RECIPES / "demo-hand.yaml").read_text())
    for m in rec["models"]:  # the committed recipe uses project-relative paths; the test world may live elsewhere
        m["model"] = str(world.root / "models" / Path(m["model"]).name)
    rec["base_model"] = str(world.base)
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump(rec))
    assert main(["merge", str(path), "--out", str(tmp_path / "ours"), "--seed", "42"]) == 0
    meta = json.loads((tmp_path / "ours" / "merge.json").read_text())
    assert meta["seed"] == 42 and meta["device"] == "cpu" and set(meta["versions"]) >= {"torch", "mergekit"}
    assert MergeConfiguration.model_validate(yaml.safe_load(meta["recipe"])).to_yaml() == \
        MergeConfiguration.model_validate(rec).to_yaml()
    capsys.readouterr()
    assert main(["hash", str(tmp_path / "ours")]) == 0
    assert capsys.readouterr().out.strip() == meta["weights_sha256"]
    assert stock_hash(rec, tmp_path / "stock", 42) == meta["weights_sha256"]
    assert main(["hash", str(tmp_path / "missing")]) == 2
    assert merge_to_dir(path, tmp_path / "again", seed=42)["weights_sha256"] == meta["weights_sha256"]


@pytest.mark.slow
def test_world_is_worth_searching(world, merger, tmp_path):
    """On the demo world's test split a searched DARE-TIES setting beats every single expert and the hand
    recipe, and a poor setting scores clearly lower: there is something for the search to find. The merges
    are made by stock mergekit (``run_merge`` to disk, then reloaded)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    from objectives.lmeval import evaluate_tasks

    tasks = list(world.tasks["test"].values())
    samples = {t: list(range(100)) for t in tasks}  # half of each test task keeps this test short

    def avg(model, tok) -> float:
        res = evaluate_tasks(model, tok, tasks, include_path=world.include_path, samples=samples, batch_size=64,
                             include_defaults=False)
        return sum(r["score"] for r in res.values()) / len(tasks)

    experts = {}
    for skill, path in world.experts.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        experts[skill] = avg(model, merger.tokenizer)
    scores = {}
    for label, density, weight in [("good", (0.7,) * 3, (0.7,) * 3), ("hand", (0.6,) * 3, (0.3, 0.3, 0.4)),
                                   ("poor", (0.1,) * 3, (0.1,) * 3)]:
        out = tmp_path / label
        run_merge(MergeConfiguration.model_validate(recipe(world, density=density, weight=weight, int8_mask=True)),
                  str(out), MergeOptions(random_seed=0, quiet=True))
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        scores[label] = avg(model, merger.tokenizer)
    assert scores["good"] > max(experts.values()), (scores, experts)
    assert scores["good"] > scores["hand"], (scores, experts)
    assert scores["poor"] < min(experts.values()) and scores["good"] - scores["poor"] > 0.2, (scores, experts)


def test_merge_pins_and_records_thread_count(world):
    """CPU merge bits depend on torch's thread count: a merge pins it when asked, records it, restores it."""
    import torch

    from search.merge import ResidentMerger

    recipe = {"merge_method": "task_arithmetic", "base_model": str(world.base), "dtype": "float32",
              "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in world.experts.values()]}
    merger = ResidentMerger(str(world.base), [str(p) for p in world.experts.values()], dtype="float32")
    before = torch.get_num_threads()
    one = merger.merge(recipe, 0, threads=1)
    assert one.threads == 1 and torch.get_num_threads() == before
    again = merger.merge(recipe, 0, threads=1)
    assert again.weights_sha256 == one.weights_sha256
    assert merger.merge(recipe, 0).threads == before


def test_merge_cli_threads_recorded_and_reproducible(world, tmp_path):
    """`merge-search merge --threads N` records N in merge.json and equals the in-memory merge pinned to N."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from search.merge import ResidentMerger

    rec = recipe(world, density=(0.5, 0.7, 0.9), weight=(0.6, 0.6, 0.6), int8_mask=True)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(rec))
    out = tmp_path / "m"
    res = subprocess.run([str(Path(sys.executable).parent / "merge-search"), "merge", str(path), "--out", str(out),
                          "--seed", "3", "--threads", "1"], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((out / "merge.json").read_text())
    assert meta["merge_threads"] == 1 and meta["seed"] == 3
    merger = ResidentMerger(str(world.base), [str(p) for p in world.experts.values()], dtype="float32")
    assert merger.merge(rec, 3, threads=1).weights_sha256 == meta["weights_sha256"]
