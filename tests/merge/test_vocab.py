"""Merges across vocabularies (the seed-like world): in memory exactly what stock ``mergekit-yaml`` writes.

The seed-like world's sources differ as the seed's do: the base has no chat template and no ChatML tokens,
``zahlen`` added ``<|im_start|>``/``<|im_end|>`` (rows padded to a multiple of 64), ``artikel`` has
another template, ``verben`` is sharded bfloat16. For each tokenizer setting the in-memory merge and the real
``mergekit-yaml`` executable must give equal weight hashes and equivalent tokenizers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from objectives.errors import UserError
from objectives.schema import validate
from search.merge import ResidentMerger, SpaceConfig, hash_model_dir, recipe_text, save_merge, to_merge_config

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"


def _recipe(world, method: str, **settings) -> dict:
    params = {"weight": 0.4, "density": 0.6} if method == "dare_ties" else {"weight": 0.4}
    models = [{"model": str(world.base)}] + [{"model": str(p), "parameters": dict(params)}
                                             for p in world.experts.values()]
    return {"merge_method": method, "base_model": str(world.base), "dtype": "float32", "models": models, **settings}


def _stock(rec: dict, out: Path, seed: int) -> Path:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(rec) if isinstance(rec, dict) else rec, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(MERGEKIT_YAML), str(path), str(out), "--random-seed", str(seed)], check=True,
                   capture_output=True, env=env)
    return out


def _tokenizer_facts(folder: Path) -> dict:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return {"vocab": tok.get_vocab(), "added": {i: str(t) for i, t in tok.added_tokens_decoder.items()},
            "chat_template": tok.chat_template, "special": tok.special_tokens_map,
            "vocab_size": json.loads((folder / "config.json").read_text())["vocab_size"]}


def _assert_same_as_stock(rec, tmp_path: Path, name: str, seed: int = 5) -> dict:
    stock = _stock(rec, tmp_path / f"stock-{name}", seed)
    res = ResidentMerger.from_recipe(yaml.safe_load(rec) if isinstance(rec, str) else rec).merge(
        yaml.safe_load(rec) if isinstance(rec, str) else rec, seed=seed, threads=1)
    mine = tmp_path / f"mine-{name}"
    save_merge(res, mine)
    assert hash_model_dir(mine) == hash_model_dir(stock) == res.weights_sha256
    facts = _tokenizer_facts(stock)
    assert _tokenizer_facts(mine) == facts
    return facts


CASES = {
    "base-dare": ("dare_ties", {"tokenizer": {"source": "base"}}),
    "union-source-ta": ("task_arithmetic", {"tokenizer_source": "union", "chat_template": "chatml"}),
    "pad8-dare": ("dare_ties", {"tokenizer": {"source": "union", "pad_to_multiple_of": 8}}),
    "tokens-ta": ("task_arithmetic", {"tokenizer": {"source": "union", "tokens": {
        "<|im_end|>": {"source": {"kind": "model_token", "model": "BASE", "token": "</s>"}, "force": True},
        "<|im_start|>": {"source": {"kind": "zero"}}}}}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_merge_across_vocabularies_equals_stock_mergekit_yaml(seedlike_world, tmp_path, name):
    method, settings = CASES[name]
    settings = json.loads(json.dumps(settings).replace('"BASE"', json.dumps(str(seedlike_world.base))))
    facts = _assert_same_as_stock(_recipe(seedlike_world, method, **settings), tmp_path, name)
    base_vocab = transformers.AutoTokenizer.from_pretrained(seedlike_world.base).get_vocab()
    has_chatml = "<|im_start|>" in facts["vocab"]
    assert has_chatml == (name != "base-dare")  # union brings zahlen's added tokens, base does not
    assert set(base_vocab) <= set(facts["vocab"])
    if name == "pad8-dare":
        assert facts["vocab_size"] % 8 == 0 and facts["vocab_size"] >= len(facts["vocab"])
    if name == "union-source-ta":
        assert "<|im_start|>" in facts["chat_template"]


def test_exported_trial_recipe_of_a_space_with_a_tokenizer_setting_equals_stock(seedlike_world, tmp_path):
    """A trial's recorded recipe carries the space's tokenizer and chat template; stock mergekit reproduces it."""
    space = validate(SpaceConfig, {
        "base_model": str(seedlike_world.base), "merge_method": "dare_ties", "dtype": "float32",
        "models": [{"model": str(p)} for p in seedlike_world.experts.values()],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 8}, "chat_template": "chatml"}, "space")
    params = {s.name: 0.5 for s in space.searched}
    text = recipe_text(space, params)
    assert "tokenizer:" in text and "chat_template: chatml" in text
    facts = _assert_same_as_stock(text, tmp_path, "trial")
    assert "<|im_start|>" in facts["chat_template"] and facts["vocab_size"] % 8 == 0
    merger = ResidentMerger.from_space(space)  # the search's merger is shaped by the space before any trial
    assert merger.model.get_input_embeddings().weight.shape[0] == facts["vocab_size"]
    assert merger.merge(to_merge_config(space, params), seed=5, threads=1).weights_sha256 == \
        hash_model_dir(tmp_path / "stock-trial")


def test_vocabulary_mismatch_without_a_tokenizer_setting_names_the_fix(seedlike_world):
    with pytest.raises(UserError, match=r"tokenizer: \{source: base\}") as err:
        ResidentMerger(str(seedlike_world.base), [str(seedlike_world.experts["zahlen"])])
    assert "zahlen" in str(err.value)
    ResidentMerger(str(seedlike_world.base), [str(seedlike_world.experts["zahlen"])], tokenizer={"source": "base"})


def test_union_of_sources_that_add_different_tokens_is_refused(seedlike_world, tmp_path):
    """mergekit numbers a union's added tokens in the order of a Python set of the sources: with two sources
    adding different tokens no recipe would rebuild what was scored, so it is refused before any merge."""
    tok = transformers.AutoTokenizer.from_pretrained(seedlike_world.experts["artikel"])
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    model = transformers.AutoModelForCausalLM.from_pretrained(seedlike_world.experts["artikel"])
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(tmp_path / "zephyr-tokens")
    tok.save_pretrained(tmp_path / "zephyr-tokens")
    models = [str(seedlike_world.experts["zahlen"]), str(tmp_path / "zephyr-tokens")]
    with pytest.raises(UserError, match=r"the sources add different tokens .*'<\|user\|>'.*source: MODEL"):
        ResidentMerger(str(seedlike_world.base), models, tokenizer={"source": "union"})
    ResidentMerger(str(seedlike_world.base), models, tokenizer={"source": str(seedlike_world.experts["zahlen"])})


def test_bf16_sources_keep_the_dtype_the_method_produces(seedlike_world, tmp_path):
    """``ramplus_tl`` returns float32 from bfloat16 inputs and stock mergekit writes that: so does the merger;
    an ``out_dtype`` casts instead. Sharded bfloat16 ``verben`` is read through its index."""
    rec = {"merge_method": "ramplus_tl", "base_model": str(seedlike_world.base), "dtype": "bfloat16",
           "tokenizer": {"source": "base"},
           "models": [{"model": str(seedlike_world.experts[s])} for s in ("zahlen", "verben")]}
    _assert_same_as_stock(rec, tmp_path, "ramplus")
    res = ResidentMerger.from_recipe(rec).merge(rec, seed=5, threads=1)
    stock = load_file(tmp_path / "stock-ramplus" / "model.safetensors")
    assert {t.dtype for t in stock.values()} == {res.model.dtype} == {torch.float32}  # what stock mergekit writes
    cast = {**rec, "out_dtype": "bfloat16"}
    _assert_same_as_stock(cast, tmp_path, "ramplus-bf16")


def test_slices_change_the_resident_models_depth(seedlike_world, tmp_path):
    rec = {"merge_method": "passthrough", "dtype": "float32", "tokenizer": {"source": "union"},
           "base_model": str(seedlike_world.base),  # else mergekit's union takes an arbitrary model's specials
           "slices": [{"sources": [{"model": str(seedlike_world.base), "layer_range": [0, 2]}]},
                      {"sources": [{"model": str(seedlike_world.experts["zahlen"]), "layer_range": [1, 2]}]}]}
    _assert_same_as_stock(rec, tmp_path, "slices")
    assert ResidentMerger.from_recipe(rec).merge(rec, seed=5).model.config.num_hidden_layers == 3
    with pytest.raises(UserError, match="set base_model"):
        ResidentMerger.from_recipe({k: v for k, v in rec.items() if k != "base_model"})


def test_space_refuses_both_tokenizer_settings_and_a_bad_chat_template(seedlike_world):
    with pytest.raises(UserError) as err:
        validate(SpaceConfig, {"base_model": str(seedlike_world.base), "models": [{"model": "x"}],
                               "tokenizer_source": "union", "tokenizer": {"source": "base", "tokens": {
                                   "<|im_end|>": {"sorce": "base"}}}, "chat_template": "chatmk"}, "space")
    text = str(err.value)
    assert "3 config error(s)" in text, text
    assert "give only one" in text and "sorce" in text and "did you mean 'chatml'" in text
