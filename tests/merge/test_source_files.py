"""A source folder's files checked where they enter (search.merge.source_files)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from objectives.errors import UserError
from objectives.templates import CHATML_TEMPLATE, resolve_chat_template
from search.merge.source_files import INDEX, path_problems, shard_problems, tokenizer_problems
from search.merge.sources import model_folder_problems


def sharded(folder):
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"a": torch.zeros(2)}, str(folder / "s1.safetensors"))
    save_file({"b": torch.zeros(2)}, str(folder / "s2.safetensors"))
    (folder / INDEX).write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    return folder


def test_a_sound_sharded_checkpoint_has_no_problem(tmp_path):
    assert shard_problems(sharded(tmp_path / "m")) == []
    assert model_folder_problems(tmp_path / "m") == []


def test_a_missing_shard_a_truncated_index_and_a_wrong_mapping_are_named(tmp_path):
    m = sharded(tmp_path / "m")
    (m / "s2.safetensors").unlink()
    [missing] = shard_problems(m)
    assert "shard 's2.safetensors'" in missing and "missing" in missing
    m = sharded(tmp_path / "m2")
    (m / INDEX).write_text((m / INDEX).read_text()[:20])
    [bad] = shard_problems(m)
    assert INDEX in bad and "not a readable index" in bad
    m = sharded(tmp_path / "m3")
    (m / INDEX).write_text(json.dumps({"weight_map": {"a": "s2.safetensors", "b": "s2.safetensors"}}))
    [wrong] = shard_problems(m)
    assert "'a' -> 's2.safetensors'" in wrong


def _tokenizer(folder):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder.mkdir()
    Tokenizer(WordLevel({"<unk>": 0, "hallo": 1}, unk_token="<unk>")).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML_TEMPLATE}))
    return folder


def test_tokenizer_files_that_do_not_load_and_templates_that_do_not_render(tmp_path):
    good = _tokenizer(tmp_path / "good")
    assert tokenizer_problems(good) == []
    cut = _tokenizer(tmp_path / "cut")
    text = (cut / "tokenizer.json").read_text()
    (cut / "tokenizer.json").write_text(text[: len(text) // 2])
    [problem] = tokenizer_problems(cut)
    assert "tokenizer.json does not load" in problem
    tpl = _tokenizer(tmp_path / "tpl")
    (tpl / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for m in messages %}{{ m }"}))
    [problem] = tokenizer_problems(tpl)
    assert "chat template in tokenizer_config.json does not render" in problem and "TemplateSyntaxError" in problem
    (tpl / "tokenizer_config.json").write_text('{"chat_template": ')
    [problem] = tokenizer_problems(tpl)
    assert "tokenizer_config.json is not valid JSON" in problem


def test_paths_with_spaces_and_broken_configured_templates_are_refused():
    [problem] = path_problems("/models/my model")
    assert "spaces" in problem and "ln -s" in problem
    assert path_problems("/models/my-model") == []
    with pytest.raises(UserError, match="dpo.chat_template: the chat template does not work"):
        resolve_chat_template("{% if x %}{{ y }}", "dpo.chat_template")
    assert resolve_chat_template("chatml", "dpo.chat_template") == CHATML_TEMPLATE
