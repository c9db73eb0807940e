"""``weights_sha256``: one fingerprint for "the weights that were scored", in memory or on disk.

SHA-256 over every tensor in sorted name order; each tensor contributes its name (UTF-8) followed by its
raw bytes as stored (contiguous, in the tensor's own dtype, the machine's little-endian layout that
safetensors also uses). The same function hashes a resident ``PreTrainedModel`` and a saved model folder (its
``*.safetensors`` files), so an exported merge can be checked against the scored candidate with
``merge-search hash DIR``.

A model contributes the tensors ``save_pretrained`` writes: its ``state_dict()`` without tied aliases (with
``tie_word_embeddings`` the state dict holds ``lm_head.weight`` and ``model.embed_tokens.weight``, one storage
under two names; the files, ``save_pretrained``'s and stock ``mergekit-yaml``'s alike, hold only the latter).
transformers' own ``remove_tied_weights_from_state_dict`` decides which name stays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from objectives.errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = ["hash_model_dir", "saved_tensors", "source_fingerprint", "tensor_bytes", "weights_sha256"]


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of ``t`` as stored: contiguous, its own dtype, on the CPU."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def saved_tensors(model) -> dict[str, torch.Tensor]:
    """The tensors ``model.save_pretrained`` writes: the state dict without tied aliases (see module doc)."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    return remove_tied_weights_from_state_dict(dict(model.state_dict()), model)


def weights_sha256(model_or_state_dict) -> str:
    """SHA-256 (hex) of a model's :func:`saved_tensors` or of a ``{name: tensor}`` mapping (see module doc)."""
    tensors: Mapping[str, torch.Tensor] = (
        model_or_state_dict if isinstance(model_or_state_dict, Mapping) else saved_tensors(model_or_state_dict)
    )
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode("utf-8"))
        h.update(tensor_bytes(tensors[name]))
    return h.hexdigest()


def hash_model_dir(path: str | Path) -> str:
    """``weights_sha256`` of the tensors in every ``*.safetensors`` file of a saved model folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    if not files:
        raise UserError(f"{str(p)!r} holds no *.safetensors files: pass a folder written by "
                        "`merge-search merge`, `mergekit-yaml` or `save_pretrained`")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            loaded = load_file(str(f))
        except (SafetensorError, OSError) as err:
            raise UserError(f"{f}: not a readable safetensors file ({err}): save or download it again") from None
        for name, t in loaded.items():
            if name in tensors:
                raise UserError(f"tensor {name!r} appears in two shards of {str(p)!r}: the folder is corrupt")
            tensors[name] = t
    return weights_sha256(tensors)


SAMPLE_BYTES = 1 << 16  # bytes read at each sampled offset of a weights file
SAMPLES = 8  # sampled offsets per file, spread evenly over its tensor data


def source_fingerprint(path: str | Path) -> str | None:
    """A cheap fingerprint of a source model folder's weights and tokenizer, to tell "the same source" from
    "other weights under the same path" (a study made from one set of weights must not be resumed on another).

    SHA-256 over each ``*.safetensors`` file's name, size, whole header and :data:`SAMPLES` blocks of
    :data:`SAMPLE_BYTES` spread over its data (about 0.5 MB read per file, whatever its size), plus the
    tokenizer and config files whole. Not a content hash: weights edited only between the sampled blocks go
    unseen (``merge-search hash DIR`` hashes everything). None for a path that is not a local folder (a hub
    id: its revision is the hub's business)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as handle:
            head = handle.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            h.update(head + handle.read(min(n, size)))
            start, span = 8 + n, max(size - 8 - n, 0)
            for k in range(SAMPLES if span else 0):
                handle.seek(start + span * k // SAMPLES)
                h.update(handle.read(SAMPLE_BYTES))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                 "special_tokens_map.json", "added_tokens.json", "model.safetensors.index.json"):
        f = p / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
