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


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The demo world's tokenizer: specials first (ids 0..5), then one id per character of ALPHABET."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in ALPHABET:
        vocab.setdefault(ch, len(vocab))
    # A BPE model with no merges splits every (un-pre-tokenised) string into single characters.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = 512
    return tok


def build_plain_tokenizer() -> PreTrainedTokenizerFast:
    """A base-model tokenizer without chat markup: specials ``<unk> <s> </s> <pad>`` (ids 0..3), then one id per
    character of PLAIN_ALPHABET; eos ``</s>``, no chat template."""
    vocab = {tok: i for i, tok in enumerate(PLAIN_SPECIALS)}
    for ch in PLAIN_ALPHABET:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(PLAIN_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    tok.model_max_length = 512
    return tok
