"""A character-level tokenizer for the demo world, built locally with the ``tokenizers`` library.

Every character of generated German text is one token (so log-likelihoods of answer options are exact and
free of tokenisation artefacts), plus the ChatML special tokens and a ChatML chat template.

The seedlike world (:mod:`demoworld.seedlike`) starts from :func:`build_plain_tokenizer` instead: the same
characters plus ``<>|_`` (so chat markers that are not tokens can be spelled out), only the specials ``<unk>
<s> </s> <pad>``, eos ``</s>`` and no chat template, as Mistral-7B-v0.1's tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from objectives.templates import CHATML_TEMPLATE

__all__ = ["ALPHABET", "CHATML_TEMPLATE", "PLAIN_ALPHABET", "PLAIN_SPECIALS", "build_plain_tokenizer",
           "build_tokenizer"]

ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "äöüßÄÖÜ"
    "0123456789"
    " .,:;!?-+*/=()'\"\n"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
PLAIN_ALPHABET = ALPHABET + "<>|_"
PLAIN_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def _char_tokenizer(specials: list[str], alphabet: str, **special_tokens) -> PreTrainedTokenizerFast:
    """``specials`` first (ids 0..), then one id per character of ``alphabet``: a BPE model with no merges splits
    every (un-pre-tokenised) string into single characters."""
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", pad_token="<pad>",
                                  **special_tokens)
    tok.model_max_length = 512
    return tok


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The demo world's tokenizer: specials first (ids 0..5), then one id per character of ALPHABET."""
    tok = _char_tokenizer(SPECIALS, ALPHABET, eos_token="<|im_end|>",
                          additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_plain_tokenizer() -> PreTrainedTokenizerFast:
    """A base-model tokenizer without chat markup: specials ``<unk> <s> </s> <pad>`` (ids 0..3), then one id per
    character of PLAIN_ALPHABET; eos ``</s>``, no chat template."""
    return _char_tokenizer(PLAIN_SPECIALS, PLAIN_ALPHABET, eos_token="</s>")
