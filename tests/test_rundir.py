"""RunDir: what a manifest stores."""

from __future__ import annotations

from pathlib import Path

from search.rundir import RunDir


def test_a_relative_sqlite_url_is_stored_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert RunDir.absolute_url("sqlite:///runs/study.db") == f"sqlite:///{(tmp_path / 'runs/study.db').as_posix()}"
    assert RunDir.absolute_url("sqlite:///s.db?timeout=5").endswith(f"{tmp_path.as_posix()}/s.db?timeout=5")
    for kept in (None, "sqlite:////abs/s.db", "postgresql://u@127.0.0.1/db", "sqlite:///:memory:"):
        assert RunDir.absolute_url(kept) == kept
    assert Path(RunDir.absolute_url("sqlite:///x.db").removeprefix("sqlite:///")).is_absolute()
