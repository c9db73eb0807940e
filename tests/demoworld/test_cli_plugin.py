"""``merge-search demo-world`` is a plugin: found through the ``merge_search.commands`` entry point, and a plugin
that fails to load leaves the other commands working (no world needed)."""

from __future__ import annotations

import importlib.metadata

import pytest

import search.cli as cli


def test_demo_world_is_an_installed_plugin():
    eps = importlib.metadata.entry_points(group=cli.PLUGIN_GROUP)
    assert [(ep.name, ep.value) for ep in eps if ep.name == "demo-world"] == [("demo-world", "demoworld.cli:register")]
    assert "search.cli.world" not in cli.COMMAND_MODULES
    assert "demo-world" in cli.build_parser().format_help()


def test_demo_world_build_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo-world", "build", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--out OUT" in out and "--kind {demo,seedlike}" in out


def test_a_broken_plugin_is_skipped_with_one_warning(monkeypatch, capsys):
    real = list(importlib.metadata.entry_points(group=cli.PLUGIN_GROUP))
    broken = [importlib.metadata.EntryPoint("broken", "no_such_module_xyz:register", cli.PLUGIN_GROUP),
              importlib.metadata.EntryPoint("bad-register", "json:dumps", cli.PLUGIN_GROUP)]
    monkeypatch.setattr(cli.importlib.metadata, "entry_points", lambda group: real + broken)
    parser = cli.build_parser()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("merge-search: warning: command plugin ") for line in err)
    assert "'broken'" in err[1] and "ModuleNotFoundError" in err[1]  # by name: bad-register first
    assert parser.parse_args(["hash", "x"]).command == "hash"
    assert parser.parse_args(["demo-world", "build", "--out", "w"]).out == "w"
