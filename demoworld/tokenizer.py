"""A character-level tokenizer for the demo world, built locally with the ``tokenizers`` library.

Every character of generated German text is one token (so log-likelihoods of answer options are exact and
free of tokenisation artefacts), plus the ChatML special tokens and a ChatML chat template.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from objectives.templates import CHATML_TEMPLATE

__all__ = ["ALPHABET", "CHATML_TEMPLATE", "build_tokenizer"]

ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "äöüßÄÖÜ"
    "0123456789"
    " .,:;!?-+*/=()'\"\n"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


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
