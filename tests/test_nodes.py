"""search.nodes: what each machine that would run trials lacks (GPU memory against the plan, cached hub models)."""

from __future__ import annotations

from safetensors_headers import mistral_7b_header  # tests/safetensors_headers.py

from search.merge.memory import plan
from search.nodes import describe, gpu_share, machine_facts, machine_problems

GIB = 1 << 30


def _machine(free_gib: list[float], **extra) -> dict:
    return {"host": "node1", "torch": "2.13.0", "cuda_build": "12.8", "disk_free": 500 * GIB, "missing": [],
            "gpus": [{"name": "H100", "free": int(g * GIB), "total": 80 * GIB} for g in free_gib], **extra}


def test_a_worker_without_enough_gpu_memory_is_named_with_its_share():
    need = 20 * GIB
    assert machine_problems("cuda", _machine([79.0]), need) == []
    [problem] = machine_problems("cuda", _machine([79.0]), need, worker_gpus=0.25)  # four workers share a GPU
    assert "needs at least 20.0 GiB" in problem and "at most 19.8 GiB free on node1" in problem
    assert "search.worker_gpus" in problem
    assert gpu_share(_machine([10.0, 40.0]), None) == 40 * GIB and gpu_share(_machine([]), 1.0) == 0
    assert machine_problems("cpu", _machine([1.0]), need) == []  # CPU trials: GPU memory is not what they need
    [none] = machine_problems("cuda", _machine([]), need)
    assert "sees no GPU" in none


def test_hub_models_missing_from_a_nodes_cache_fail_only_where_it_cannot_download(tmp_path):
    here = machine_facts([str(tmp_path), str(tmp_path / "absent")], str(tmp_path), ["nobody/not-cached-7b"])
    assert here["missing"] == [str(tmp_path / "absent")] and here["uncached"] == ["nobody/not-cached-7b"]
    online = _machine([79.0], uncached=["nobody/not-cached-7b"], offline=False)
    assert machine_problems("cuda", online) == []
    assert "downloaded at first load): ['nobody/not-cached-7b']" in describe(online)
    [problem] = machine_problems("cuda", {**online, "offline": True})
    assert "HF_HUB_OFFLINE is set on node1" in problem and "nobody/not-cached-7b" in problem


def test_the_7b_plan_against_an_80_gb_card(tmp_path):
    sources = [tmp_path / n for n in ("base", "disco", "phoenix", "ftopt")]
    for s in sources:
        mistral_7b_header(s)
    p = plan(sources, "bfloat16", device="cuda")
    h100 = _machine([79.0])
    assert machine_problems("cuda", h100, p.streamed) == [] and not p.fits(gpu_share(h100, None))
    assert machine_problems("cuda", h100, p.streamed, worker_gpus=0.5) == []  # two streaming 7B workers fit
    assert machine_problems("cuda", h100, p.streamed, worker_gpus=0.2) != []  # five do not
