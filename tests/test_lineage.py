"""Lineage of a run folder's stage markers (search.lineage): what makes a finished stage stale."""

from __future__ import annotations

import json
from types import SimpleNamespace

from objectives.schema import validate
from search import atomic
from search.config import RunConfig
from search.lineage import marker_record, stale_stages
from search.rundir import RunDir

BASE = {"name": "t", "space": {"base_model": "b", "models": [{"model": "x"}, {"model": "y"}]},
        "objective": {"tasks": [{"name": "a"}]}}


def cfg(**sections) -> RunConfig:
    return validate(RunConfig, {**BASE, **sections}, "t")


def stages(run: RunDir):
    """Stand-ins of the pipeline's stage modules: a search, an export with an output fingerprint, DPO, report."""
    export_fp = lambda r: r.best_yaml.read_text() if r.best_yaml.is_file() else None  # noqa: E731
    return (SimpleNamespace(NAME="search", SECTIONS=("name", "seed", "space", "objective", "search")),
            SimpleNamespace(NAME="export", SECTIONS=(), output_fingerprint=export_fp),
            SimpleNamespace(NAME="dpo", SECTIONS=("dpo",)),
            SimpleNamespace(NAME="report", SECTIONS=()))


def finish_all(c: RunConfig, run: RunDir, table) -> None:
    for i, stage in enumerate(table):
        run.marker(stage.NAME).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run.marker(stage.NAME), marker_record(c, run, stage, table[:i], 1.0))


def test_unchanged_inputs_are_not_stale_and_resource_keys_do_not_count(tmp_path):
    run = RunDir(tmp_path)
    run.best_yaml.write_text("recipe A")
    table = stages(run)
    finish_all(cfg(), run, table)
    marker = json.loads(run.marker("dpo").read_text())
    assert set(marker["inputs"]["upstream"]) == {"search", "export"} and marker["inputs"]["config"]["dpo"]
    assert stale_stages(cfg(), run, table) == {}
    assert stale_stages(cfg(search={"workers": 4}, objective={**BASE["objective"], "threads": 2}), run, table) == {}


def test_a_changed_section_makes_its_stage_and_every_later_one_stale(tmp_path):
    run = RunDir(tmp_path)
    run.best_yaml.write_text("recipe A")
    table = stages(run)
    finish_all(cfg(), run, table)
    stale = stale_stages(cfg(dpo={"train": {"max_steps": 3}}), run, table)
    assert list(stale) == ["dpo", "report"]
    assert "dpo.train.max_steps changed" in stale["dpo"] and "'dpo'" in stale["report"]
    assert list(stale_stages(cfg(search={"n_trials": 99}), run, table)) == ["search", "export", "dpo", "report"]


def test_a_new_export_makes_the_stages_made_from_the_old_one_stale(tmp_path):
    run = RunDir(tmp_path)
    run.best_yaml.write_text("recipe A")
    table = stages(run)
    finish_all(cfg(), run, table)
    run.best_yaml.write_text("recipe B")  # merge-search export --out RUN/best.yaml
    stale = stale_stages(cfg(), run, table)
    assert list(stale) == ["dpo", "report"] and "stage 'export' has other results" in stale["dpo"]


def test_markers_without_lineage_are_taken_as_they_are(tmp_path):
    run = RunDir(tmp_path)
    table = stages(run)
    for stage in table:
        run.marker(stage.NAME).parent.mkdir(parents=True, exist_ok=True)
        run.marker(stage.NAME).write_text(json.dumps({"stage": stage.NAME, "seconds": 1, "finished": "x"}))
    assert stale_stages(cfg(dpo={"train": {"max_steps": 3}}), run, table) == {}
