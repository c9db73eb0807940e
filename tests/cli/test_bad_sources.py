"""Sources as unlike as the seed's, and chat templates: each bad input is one line, exit 2, nothing stored
changed, refused before any trial, merge or model load (issue 13's point 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bad_scene import Scene, assert_refused, copy_model, make_scene, recipe  # tests/cli/bad_scene.py


@pytest.fixture(scope="module")
def scene(world, tmp_path_factory) -> Scene:
    return make_scene(world, tmp_path_factory.mktemp("badsrc"))


def _no_template(scene: Scene) -> Path:
    """A copy of the base whose tokenizer has no chat template (as Mistral-7B-v0.1 ships)."""
    dst = scene.root / "notemplate"
    if not dst.exists():
        shutil.copytree(scene.world.base, dst)
        (dst / "chat_template.jinja").unlink(missing_ok=True)
        cfg = json.loads((dst / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def _other_shape(scene: Scene, name: str, **config) -> Path:
    """A fresh model beside the world's with one config value changed (saved as safetensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dst = scene.root / name
    if not dst.exists():
        cfg = AutoConfig.from_pretrained(scene.world.experts["zahlen"])
        for key, value in config.items():
            setattr(cfg, key, value)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(dst)
    return dst


def _added_tokens(scene: Scene) -> Path:
    """zahlen with two rows added to its embeddings, as a ChatML fine-tune adds <|im_start|>/<|im_end|>."""
    from transformers import AutoModelForCausalLM

    dst = scene.root / "addedtokens"
    if not dst.exists():
        model = AutoModelForCausalLM.from_pretrained(scene.world.experts["zahlen"])
        model.resize_token_embeddings(model.get_input_embeddings().weight.shape[0] + 2)
        model.save_pretrained(dst)
    return dst


def _other_architecture(scene: Scene) -> Path:
    dst = copy_model(scene, "otherarch")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _damaged(scene: Scene, how: str) -> Path:
    """A copy of zahlen damaged as downloads and hand edits damage models (issue 23's point 4)."""
    if how == "path with spaces":
        dst = scene.root / "zahlen copy"
        if not dst.exists():
            shutil.copytree(scene.world.experts["zahlen"], dst)
        return dst
    dst = copy_model(scene, how.replace(" ", "-"))
    if how == "cut tokenizer" and (dst / "tokenizer.json").stat().st_size > 100:
        text = (dst / "tokenizer.json").read_text()
        (dst / "tokenizer.json").write_text(text[: len(text) // 2])
    elif how == "broken template":
        (dst / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    elif how == "missing shard" and (dst / "model.safetensors").exists():
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(dst / "model.safetensors"))
        names = sorted(tensors)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for shard, part in shards.items():
            save_file({n: tensors[n] for n in part}, str(dst / shard), metadata={"format": "pt"})
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {n: shard for shard, part in shards.items() for n in part}}))
        (dst / "model.safetensors").unlink()
        (dst / "model-00002-of-00002.safetensors").unlink()
    return dst


def _with_source(s: Scene, how: str) -> list[str]:
    return ["search", str(s.config_with(f"{how.replace(' ', '-')}.yaml", space__models__0__model=str(
        _damaged(s, how)))), "--out", str(s.root / "never")]


def _recipe_other_tokenizer(scene: Scene) -> str:
    data = {**recipe(scene.world), "tokenizer_source": "union", "parameters": {"int8_mask": True}}
    return str(scene.write("rtok.yaml", data))



# (id, argv from the scene, text the one stderr line must contain)
CASES = [
    # sources as unlike as the seed's, and chat templates (issue 13)
    ("other-hidden-size", lambda s: ["search", str(s.config_with("hidden.yaml", space__models__0__model=str(
        _other_shape(s, "hidden64", hidden_size=64, head_dim=16)))), "--out", str(s.root / "never")],
     "does not match the base model"),
    ("other-architecture", lambda s: ["search", str(s.config_with("arch.yaml", space__models__0__model=str(
        _other_architecture(s)))), "--out", str(s.root / "never")], "has architecture ['Qwen2ForCausalLM']"),
    ("added-tokens-without-tokenizer-setting", lambda s: ["search", str(s.config_with(
        "vocab.yaml", space__models__0__model=str(_added_tokens(s)))), "--out", str(s.root / "never")],
     "`tokenizer: {source: base}`"),
    ("hand-recipe-other-tokenizer", lambda s: ["search", str(s.config_with("rtok-run.yaml", recipes=[
        _recipe_other_tokenizer(s)])), "--out", str(s.root / "never")], "give the recipe the space's tokenizer_source"),
    ("run-source-without-template", lambda s: ["run", str(s.config_with(
        "notpl.yaml", space__models__0__model=str(_no_template(s)))), "--out", str(s.root / "never")],
     "set mtbench.chat_template"),
    ("run-dpo-model-template-missing", lambda s: ["run", str(s.config_with(
        "dpotpl.yaml", space__base_model=str(_no_template(s)), space__models__0__model=str(s.world.base),
        mtbench__chat_template="chatml", dpo__chat_template="model")), "--out", str(s.root / "never")],
     "dpo.chat_template is 'model' but the merge will have no chat template"),
    ("mtbench-model-without-template", lambda s: ["mtbench", "run", "--config", str(s.config), "--model",
                                                  str(_no_template(s)), "--out", str(s.root / "never")],
     "set mtbench.chat_template"),
    ("dpo-model-without-template", lambda s: ["dpo", str(s.config_with("dpom.yaml", dpo__chat_template="model")),
                                              "--model", str(_no_template(s)), "--out", str(s.root / "never")],
     "dpo.chat_template is 'model' but the tokenizer"),
    ("dpo-old-template-key", lambda s: ["dpo", str(s.config_with("dpoold.yaml", dpo__template="chatml")),
                                        "--model", str(s.world.base), "--out", str(s.root / "never")],
     "`template` is now `chat_template`"),
    ("dpo-unknown-template", lambda s: ["dpo", str(s.config_with("dpoc.yaml", dpo__chat_template="chatmk")),
                                        "--model", str(s.world.base), "--out", str(s.root / "never")],
     "dpo.chat_template"),
    ("space-unknown-template", lambda s: ["search", str(s.config_with("sct.yaml", space__chat_template="chatmk")),
                                          "--out", str(s.root / "never")], "did you mean 'chatml'"),
    ("dpo-unknown-trainable-token", lambda s: ["dpo", str(s.config_with("dpot.yaml", dpo__lora__trainable_tokens=[
        "<|im_begin|>"], dpo__train__max_steps=1)), "--model", str(s.world.base), "--out", str(s.root / "never")],
     "dpo.lora.trainable_tokens"),
    # damaged sources, refused before the study exists (issue 23)
    ("truncated-tokenizer-json", lambda s: _with_source(s, "cut tokenizer"), "tokenizer.json does not load"),
    ("broken-source-template", lambda s: _with_source(s, "broken template"),
     "the chat template in chat_template.jinja does not render"),
    ("sharded-source-missing-shard", lambda s: _with_source(s, "missing shard"),
     "shard 'model-00002-of-00002.safetensors' named by model.safetensors.index.json is missing"),
    ("source-path-with-spaces", lambda s: _with_source(s, "path with spaces"), "model paths with spaces"),
    ("token-source-outside-the-merge", lambda s: ["search", str(s.config_with("tokens.yaml", space__tokenizer={
        "source": "union", "tokens": {"<|im_end|>": {"source": "missing/model"}}})), "--out", str(s.root / "never")],
     "tokens['<|im_end|>'].source names 'missing/model'"),
    ("broken-dpo-template", lambda s: ["dpo", str(s.config_with("dpojinja.yaml", dpo__chat_template="{% if x %}")),
                                       "--model", str(s.world.base), "--out", str(s.root / "never")],
     "dpo.chat_template: the chat template does not work"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_source_or_template_is_one_line_and_changes_nothing(scene, case, capsys, monkeypatch):
    name, argv, expected = case
    monkeypatch.chdir(scene.root)
    assert_refused(scene, argv(scene), expected, capsys)
