"""Sources that cannot be merged as they are: each one clear problem before any trial."""

from __future__ import annotations

from transformers import AutoModelForCausalLM

from search.merge.sources import source_problems


def test_added_tokens_are_named_as_a_vocabulary_mismatch(world, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(world.experts["zahlen"])
    rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(rows + 2)  # as a ChatML fine-tune adds <|im_start|> / <|im_end|>
    model.save_pretrained(tmp_path / "chatml")
    problems = source_problems(str(world.base), [str(tmp_path / "chatml"), str(world.experts["artikel"])])
    assert len(problems) == 1
    assert f"vocabulary of {rows + 2} tokens" in problems[0] and f"base model {str(world.base)!r} has {rows}" in problems[0]
    assert "`tokenizer: {source: base}`" in problems[0] and "`tokenizer: {source: union}`" in problems[0]


def test_pytorch_bin_only_source_says_how_to_convert(world, tmp_path):
    import torch

    model = AutoModelForCausalLM.from_pretrained(world.experts["zahlen"])
    model.save_pretrained(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()  # as an older hub checkout ships it
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    [problem] = source_problems(str(world.base), [str(tmp_path / "bin")])
    assert "pytorch_model.bin" in problem and "safetensors" in problem
