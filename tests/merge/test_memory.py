"""The memory plan of a search worker (search.merge.memory), from safetensors headers alone."""

from __future__ import annotations

from safetensors_headers import mistral_7b_header  # tests/safetensors_headers.py

from search.merge.memory import DEVICE_OVERHEAD, EVAL_SHARE, header_params, plan, resolve_cache_sources

GIB = 1 << 30


def test_a_7b_plan_from_header_only_files(tmp_path):
    sources = [tmp_path / n for n in ("base", "disco", "phoenix", "ftopt")]
    counts = [mistral_7b_header(s) for s in sources]
    assert counts[0] == 7_241_732_096 == header_params(sources[0])  # Mistral-7B-v0.1's parameter count
    p = plan(sources, "bfloat16", device="cuda")
    model = 2 * 7_241_732_096
    assert p.sources == 4 * model and p.candidate == model and p.evaluation == int(model * EVAL_SHARE)
    assert p.cached == 5 * model + int(model * EVAL_SHARE) + DEVICE_OVERHEAD
    assert 70 * GIB < p.cached < 72 * GIB  # does not fit an 80 GB card once CUDA's own use is counted ...
    assert p.streamed < 20 * GIB  # ... while re-reading the sources does
    assert any("auto picks false" in line for line in p.lines(available=64 * GIB))
    assert not p.fits(79 * GIB)  # an 80 GB card's free memory: not safely
    assert p.fits(int(p.cached / 0.84)) and not p.fits(int(p.cached / 0.86))  # 15% to spare
    assert any("auto picks true" in line for line in p.lines(available=130 * GIB))
    assert plan(sources, "float32", device="cpu").candidate == 2 * model  # dtype counts, no device overhead


def test_auto_caches_what_fits_and_explicit_settings_win(tmp_path, monkeypatch):
    sources = [tmp_path / "a", tmp_path / "b"]
    for s in sources:
        mistral_7b_header(s, shards=1)
    import search.merge.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device, share=1.0: int(200 * GIB / share))
    assert resolve_cache_sources("auto", sources, "bfloat16", "cpu") is True
    assert resolve_cache_sources("auto", sources, "bfloat16", "cpu", workers_per_device=8) is False
    assert resolve_cache_sources(False, sources, "bfloat16", "cpu") is False
    assert resolve_cache_sources("auto", ["owner/not-cached"], "bfloat16", "cpu") is True  # no headers: as before


def test_the_plan_of_the_seedlike_world_counts_its_tensors(seedlike_world):
    from safetensors import safe_open

    models = [seedlike_world.base, *seedlike_world.experts.values()]
    numel = 0
    for m in models:
        for f in sorted(m.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as handle:
                numel += sum(_prod(handle.get_slice(k).get_shape()) for k in handle.keys())
    p = plan(models, "float32")
    assert p.sources == 4 * numel
    assert p.candidate == 4 * max(header_params(m) for m in models)


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
