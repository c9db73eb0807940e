"""Source models checked before anything is merged or created: folders, weights, architectures and shapes.

Reads only what is cheap: ``config.json`` and the safetensors headers (the index of a sharded checkpoint
included), never the weights. :class:`~search.merge.engine.ResidentMerger` refuses sources with these
problems, and the pre-flight checks (:mod:`search.preflight`) report them before a run folder exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from search.merge import mergekit_compat as mk
from search.merge.source_files import path_problems, shard_problems, tokenizer_problems

__all__ = ["has_chat_template", "hub_problems", "hub_reachable", "in_hub_cache", "is_local",
           "model_folder_problems", "source_problems"]

_CONVERT = ("convert it once with transformers: AutoModelForCausalLM.from_pretrained(DIR)"
            ".save_pretrained(NEW_DIR, safe_serialization=True), and name NEW_DIR instead")


def is_local(model: str) -> bool:
    """A folder path rather than a hub id (``owner/name``)."""
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or Path(model).expanduser().exists()


def model_folder_problems(path: str | Path, what: str = "model") -> list[str]:
    """Problems of a saved model folder: missing, no ``config.json``, no safetensors, an unreadable header, a
    sharded checkpoint's index that does not match its shards, tokenizer files that do not load and chat
    templates that do not render (:mod:`search.merge.source_files`)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path).expanduser()
    if not p.is_dir():
        return [f"{what} {str(path)!r}: no such folder: pass a saved model folder"]
    if not (p / "config.json").is_file():
        return [f"{what} {str(path)!r} is not a Hugging Face model folder (no config.json)"]
    files = sorted(p.glob("*.safetensors"))
    if not files:
        binary = sorted(x.name for x in p.glob("*.bin"))
        return [f"{what} {str(path)!r} has no *.safetensors weights" + (
            f" (only {binary[0]}): merge-search reads safetensors only; {_CONVERT}" if binary else "")]
    problems = []
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            problems.append(f"{what} {str(path)!r}: {f.name} is not a readable safetensors file ({err}): "
                            "download or save it again")
    return problems + shard_problems(p, what) + tokenizer_problems(p, what)


def source_problems(base_model: str, models: list[str], *, device: str = "cpu",
                    trust_remote_code: bool = False, vocabulary: str | None = None) -> list[str]:
    """Every problem of a set of merge sources (base first): folders and weights that cannot be read, another
    architecture, or tensor shapes that differ from the base. Empty when they can be merged as they are.
    ``vocabulary``: the recipe's tokenizer source (``base``, ``union``, a model; None: no setting). With one,
    vocabularies of different sizes are merged (mergekit aligns the embedding rows token by token); without
    one they are a problem naming that setting. With ``union``, sources that add *different* tokens are a
    problem too (:func:`_union_problems`).
    The sources stay open in mergekit's loader cache for ``device`` (where a merger then reads them)."""
    options = mk.merge_options(device, trust_remote_code)
    problems, refs = [], {}
    for m in dict.fromkeys([base_model, *models]):
        if is_local(m) and Path(m).expanduser().exists():
            found = path_problems(m, "model") or model_folder_problems(m, "model")
        elif is_local(m):
            found = [f"model folder {m!r} does not exist: pass an existing model folder or a hub id (owner/name)"]
        else:
            found = hub_problems(m)
        if not found:
            try:
                refs[m] = mk.model_ref(m)
                mk.open_model(refs[m], options)  # kept open in mergekit's loader cache
            except Exception as err:  # noqa: BLE001 -- hub offline, no weights, bad repo: all user input
                found = [f"cannot open model {m!r} ({type(err).__name__}: {str(err)[:200]}): pass a local model "
                         "folder, or a hub id that is downloaded/cached"]
        problems += found
    if base_model in refs:
        try:
            problems += _compatibility(base_model, refs, trust_remote_code, vocabulary is not None)
        except OSError as err:  # a hub id whose files cannot be fetched (offline, gated without a token)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return problems + [f"cannot read the sources' configs ({first[:200]}): download the models into the "
                               "Hugging Face cache first, or give HF_TOKEN for gated ones"]
    if vocabulary == "union" and base_model in refs and not problems:
        problems += _union_problems(base_model, refs, trust_remote_code)
    return problems


def in_hub_cache(model: str) -> bool:
    """Whether a hub id's config is in the local Hugging Face cache (never downloaded)."""
    return _model_file(model, "config.json") is not None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (False at once with ``HF_HUB_OFFLINE=1``)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_problems(model: str) -> list[str]:
    """A hub id that is neither in the local cache nor downloadable from here: named at once, instead of
    minutes of retries and a traceback."""
    if in_hub_cache(model) or hub_reachable():
        return []
    return [f"model {model!r} is not in the local Hugging Face cache and the hub cannot be reached from here: "
            f"download it first (huggingface-cli download {model}; gated models need HF_TOKEN and an accepted "
            "licence) into the cache the workers read (HF_HOME)"]


def _union_problems(base_model: str, refs: dict, trust_remote_code: bool) -> list[str]:
    """mergekit numbers the tokens a ``union`` adds in the order of a Python set of the sources, which changes
    from process to process: the result is the same only when every source that adds tokens adds the same."""
    from transformers import AutoTokenizer

    try:
        toks = {m: AutoTokenizer.from_pretrained(ref.model.path, revision=ref.model.revision,
                                                 trust_remote_code=trust_remote_code) for m, ref in refs.items()}
    except Exception:  # noqa: BLE001 -- a source without a tokenizer: mergekit's build names it
        return []
    base = set(toks[base_model].get_vocab())
    added: dict[str, tuple] = {}
    for m, tok in toks.items():
        rows = getattr(refs[m].config(trust_remote_code=trust_remote_code), "vocab_size", None) or len(tok)
        new = tuple(sorted((i, t, str(tok.added_tokens_decoder.get(i, ""))) for t, i in tok.get_vocab().items()
                           if t not in base and i < rows))
        if new:
            added[m] = new
    if len(set(added.values())) < 2:
        return []
    listing = "; ".join(f"{m!r} adds {[t for _, t, _ in new][:4]}" for m, new in added.items())
    return [f"tokenizer source 'union': the sources add different tokens ({listing}); mergekit numbers them in an "
            "order that changes from run to run (stock mergekit-yaml too), so no recipe would rebuild what was "
            "scored: use `tokenizer: {source: MODEL}` with a source whose tokenizer has all of them, or `base`"]


def _compatibility(base_model: str, refs: dict, trust_remote_code: bool, vocab_ok: bool) -> list[str]:
    base = refs[base_model]
    arch = base.config(trust_remote_code=trust_remote_code).architectures
    base_shapes = mk.tensor_shapes(base)
    problems = []
    for m, ref in refs.items():
        other = ref.config(trust_remote_code=trust_remote_code).architectures
        if other != arch:
            problems.append(f"model {m!r} has architecture {other} but the base model {base_model!r} has {arch}: "
                            "merge only models of one architecture")
            continue
        shapes = mk.tensor_shapes(ref)
        if base_shapes is None or shapes is None or ref is base:
            continue
        diff = sorted(n for n in set(shapes) | set(base_shapes) if shapes.get(n) != base_shapes.get(n))
        vocab = _vocab_only(diff, shapes, base_shapes)
        if vocab and vocab_ok:
            continue
        if vocab:
            problems.append(f"model {m!r} has a vocabulary of {vocab[0]} tokens but the base model {base_model!r} "
                            f"has {vocab[1]} (added tokens such as ChatML's <|im_start|>): say how to merge the "
                            "vocabularies, e.g. `tokenizer: {source: base}` (the base's tokens) or `tokenizer: {source: "
                            "union}` (every model's tokens) in space (or in the recipe)")
        elif diff:
            n = diff[0]
            problems.append(f"model {m!r} does not match the base model {base_model!r}: tensor {n!r} has shape "
                            f"{shapes.get(n)} vs {base_shapes.get(n)} ({len(diff)} tensor(s) differ): merge only "
                            "fine-tunes of the same base")
    return problems


def _vocab_only(diff: list[str], shapes: dict, base_shapes: dict) -> tuple[int, int] | None:
    """``(rows, base rows)`` when every differing tensor differs only in its first (vocabulary) dimension."""
    rows = set()
    for n in diff:
        a, b = shapes.get(n), base_shapes.get(n)
        if a is None or b is None or len(a) != len(b) or len(a) < 2 or tuple(a[1:]) != tuple(b[1:]):
            return None
        rows.add((a[0], b[0]))
    return rows.pop() if len(rows) == 1 else None


def has_chat_template(model: str) -> bool | None:
    """Whether a model's tokenizer has a chat template (``chat_template.jinja``/``.json`` or a ``chat_template``
    in ``tokenizer_config.json``) in its local folder or, for a hub id, in the Hugging Face cache; None when
    that cannot be read (not downloaded, unreadable)."""
    files = {name: _model_file(model, name) for name in ("chat_template.jinja", "chat_template.json",
                                                         "tokenizer_config.json")}
    if files["chat_template.jinja"] or files["chat_template.json"]:
        return True
    try:
        return bool(json.loads(files["tokenizer_config.json"].read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return None


def _model_file(model: str, name: str) -> Path | None:
    """``name`` of a local model folder, or of a hub id from the Hugging Face cache (never downloaded)."""
    if is_local(model):
        path = Path(model).expanduser() / name
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, name)
    except Exception:  # noqa: BLE001 -- not a valid repo id: the source checks name it
        return None
    return Path(found) if isinstance(found, str) else None
