"""``merge-search check``: the table of what can be verified before a run; creates nothing."""

from __future__ import annotations

import yaml
from bad_scene import config_data  # tests/cli/bad_scene.py

from search.cli import main


def test_check_prints_every_row_and_fails_on_a_problem(world, tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config_data(world)))
    out = tmp_path / "run"
    assert main(["check", str(good), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for row in ("run folder", "ray address", "devices", "stage search", "stage dpo", "stage mtbench",
                f"source {world.base}", "memory plan", "machine "):
        assert row in table, row
    assert "auto picks true" in table and "CPU build" in table and table.rstrip().endswith("checks ok")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config_data(world), "device": "cuda"}))
    assert main(["check", str(bad), "--out", str(out)]) == 2
    table = capsys.readouterr().out
    assert "failed               devices" in table and "sees no GPU" in table and "checks not ok" in table
    assert not out.exists()  # a check creates nothing


def test_check_names_an_unset_judge_key_in_its_own_row(world, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MS_TEST_JUDGE_KEY", raising=False)
    data = config_data(world)
    data["mtbench"] = {**data.get("mtbench", {}), "judge": {"backend": "openai", "model": "gpt-4",
                       "base_url": "http://127.0.0.1:9/v1", "api_key_env": "MS_TEST_JUDGE_KEY"}}
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path), "--out", str(tmp_path / "run")]) == 2
    rows = [line for line in capsys.readouterr().out.splitlines() if "mtbench judge" in line]
    assert any(r.startswith("failed") and "MS_TEST_JUDGE_KEY is not set" in r for r in rows), rows
    monkeypatch.setenv("MS_TEST_JUDGE_KEY", "sk-test")
    assert main(["check", str(path), "--out", str(tmp_path / "run")]) == 2  # the endpoint still cannot be reached
    assert "MS_TEST_JUDGE_KEY is not set" not in capsys.readouterr().out


def test_a_source_missing_from_the_cache_is_one_failed_row(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a cluster node without the hub
    data = config_data(world)
    data["space"]["models"][0]["model"] = "nobody/not-cached-7b"
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path), "--out", str(tmp_path / "run")]) == 2
    rows = [line for line in capsys.readouterr().out.splitlines() if "nobody/not-cached-7b" in line]
    # its own row; the memory plan (no headers) and this machine's row (not cached here) name it too
    assert not [r for r in rows if "stage search" in r]
    [row] = [r for r in rows if "source nobody/not-cached-7b" in r]
    assert row.startswith("failed") and "not in the local Hugging Face cache" in row, row


def test_a_missing_local_source_folder_is_one_failed_row(world, tmp_path, capsys):
    data = config_data(world)
    gone = tmp_path / "gone-expert"
    data["space"]["models"][0]["model"] = str(gone)
    path = tmp_path / "gone.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path), "--out", str(tmp_path / "run")]) == 2
    rows = [line for line in capsys.readouterr().out.splitlines() if str(gone) in line]
    assert not [r for r in rows if "stage search" in r]  # the stage's problem is in the source's row
    [row] = [r for r in rows if f"source {gone}" in r]
    assert row.startswith("failed") and "does not exist" in row, row
