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
