"""The checks before a run starts: who owns a run folder, storage URLs, Ray addresses, outputs, the seed recipe."""

from __future__ import annotations

import logging
import socket
import sqlite3
from pathlib import Path

import pytest
import yaml

from objectives.schema import validate
from search.config import RunConfig, load_run_config, save_run_config
from search.pipeline import owner_problems
from search.preflight import config_diff, disk_problems, output_problems, ray_problems, storage_problems
from search.rundir import RunDir

BASE = {"name": "t", "space": {"base_model": "b", "models": [{"model": "x"}, {"model": "y"}]},
        "objective": {"tasks": [{"name": "a"}]}}


def cfg(**sections) -> RunConfig:
    data = {**BASE, **sections}
    return validate(RunConfig, data, "t")


def test_config_diff_names_dotted_keys():
    assert config_diff({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 5}, "e": 0}) == ["b.c", "b.d", "e"]


def test_owner_problems_by_section(tmp_path):
    run = RunDir(tmp_path)
    save_run_config(cfg(), run.resolved_config)
    assert owner_problems(cfg(), run) == []
    assert owner_problems(cfg(search={"n_trials": 99, "workers": 8}), run) == []  # more of the same search
    [study] = owner_problems(cfg(seed=3), run)  # what the study holds: never
    assert "seed differ" in study and "another run folder" in study
    # a later stage's sections make that stage stale (search.lineage), not the folder another config's
    assert owner_problems(cfg(dpo={"train": {"max_steps": 3}}), run) == []
    assert owner_problems(cfg(pipeline={"top_k": 1}), run) == []
    assert owner_problems(cfg(seed=3), RunDir(tmp_path / "new")) == []  # a new folder has no owner yet


def test_a_key_added_to_the_schema_later_keeps_older_run_folders_their_configs_own(tmp_path):
    run = RunDir(tmp_path)
    old = cfg()
    save_run_config(old, run.resolved_config)
    stored = yaml.safe_load(run.resolved_config.read_text())
    del stored["dpo"]["lora"]["trainable_tokens"]  # as a folder of an older version
    stored["world"] = {"path": "w", "seed": 0}  # a section the schema no longer has
    stored["objective"]["stages"] = stored["objective"].pop("rungs")  # a key renamed since
    run.resolved_config.write_text(yaml.safe_dump(stored))
    assert owner_problems(old, run) == []  # defaults, removed sections and renamed keys: nothing differs
    [problem] = owner_problems(cfg(objective={"tasks": [{"name": "a"}], "rungs": [10, "all"]}), run)
    assert "objective.rungs differ" in problem


def test_storage_problems(tmp_path):
    assert storage_problems(f"sqlite:///{tmp_path}/study.db") == []
    assert "is not a URL" in storage_problems("study.db")[0]
    assert "does not exist" in storage_problems(f"sqlite:///{tmp_path}/a/b/study.db")[0]
    assert storage_problems(f"sqlite:///{tmp_path}/a/b/study.db", creating=tmp_path / "a" / "b") == []
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 100)
    assert "not a readable SQLite database" in storage_problems(f"sqlite:///{bad}")[0]
    good = tmp_path / "good.db"
    sqlite3.connect(good).execute("CREATE TABLE t (x)").connection.commit()
    assert storage_problems(f"sqlite:///{good}") == []
    assert "search.storage" in storage_problems("postgresql://u@127.0.0.1:1/db")[0]


def _answering(reply: bytes | None):
    """A loopback TCP service that answers its first connection with ``reply`` (None: stays silent)."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        conn, _ = server.accept()
        with conn:
            if reply is not None:
                conn.recv(64)
                conn.sendall(reply)
            conn.recv(64)  # until the client closes

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_ray_problems():
    assert ray_problems(None) == []
    grpc_settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # what a gRPC server (Ray's GCS) sends first
    with _answering(grpc_settings) as server:
        port = server.getsockname()[1]
        assert ray_problems(f"127.0.0.1:{port}") == []
    assert "no Ray head answers" in ray_problems(f"127.0.0.1:{port}", timeout=1)[0]
    for reply in (None, b"HTTP/1.1 400 Bad Request\r\n\r\n"):  # a silent service, a web server: not Ray
        with _answering(reply) as server:
            [problem] = ray_problems(f"127.0.0.1:{server.getsockname()[1]}", timeout=1)
            assert "but not as a Ray head" in problem
    assert "expected HOST:PORT" in ray_problems("somewhere")[0]


def test_output_problems(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert "inside the input" in output_problems(model / "out", what="--out", inputs=[model])[0]
    assert "inside the input" in output_problems(model, what="--out", inputs=[model])[0]
    assert output_problems(tmp_path / "fresh", what="--out", inputs=[model], own={"a"}) == []
    assert "not empty" in output_problems(model, what="--out", own={"a"})[0]
    (model / "merge.json").write_text("{}")
    assert output_problems(model, what="--out", marker="merge.json") == []  # its own earlier output
    assert "is not a folder" in output_problems(model / "config.json" / "x", what="--out")[0]


def test_seed_recipe_is_skipped_with_a_warning_when_it_does_not_fit(tmp_path, caplog):
    fixed = {**BASE, "space": {**BASE["space"], "models": [{"model": "x", "parameters": {"weight": 0.7}},
                                                          {"model": "y"}]}}
    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump(fixed))
    with caplog.at_level(logging.WARNING, logger="merge_search"):
        loaded = load_run_config(path)
    assert loaded.recipes == []
    assert "seed recipe is not enqueued" in caplog.text and "weight" in caplog.text
    path.write_text(yaml.safe_dump(BASE))
    assert len(load_run_config(path).recipes) == 1  # fits: the seed recipe warm-starts the search


@pytest.mark.parametrize("text, expected", [
    ("name: a\nname: b\n", "key 'name' appears twice"),
    ("space: {base_model: b, base_model: c}\n", "key 'base_model' appears twice"),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, text, expected):
    from objectives.errors import UserError

    path = Path(tmp_path / "c.yaml")
    path.write_text(text)
    with pytest.raises(UserError, match=expected):
        load_run_config(path)


def test_a_study_records_its_config_and_refuses_another(tmp_path):
    import optuna

    from search.stages.optimize import study_fingerprint, study_owner_problems
    from search.rundir import TrialAttr

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert study_owner_problems(cfg(), url) == [] and not (tmp_path / "shared.db").exists()  # never created
    study = optuna.create_study(study_name="t", storage=url)
    study.set_user_attr(TrialAttr.STUDY_CONFIG, study_fingerprint(cfg()))
    assert study_owner_problems(cfg(search={"n_trials": 99, "storage": url}), url) == []
    [problem] = study_owner_problems(cfg(space={**BASE["space"], "merge_method": "ties"}), url)
    assert "space.merge_method" in problem and "study_name" in problem


def test_disk_problems_name_the_place_and_the_space(tmp_path):
    assert disk_problems(tmp_path / "run" / "dpo", 1, "the DPO stage's outputs") == []
    [problem] = disk_problems(tmp_path / "run" / "dpo", 1 << 60, "the DPO stage's outputs")
    assert str(tmp_path) in problem and "GiB free but about 1073741824.0 GiB are needed" in problem


def test_disk_full_is_found_through_the_storage_wrappers():
    import errno

    import optuna
    import sqlalchemy

    from search.preflight import disk_full

    try:
        try:
            raise sqlalchemy.exc.OperationalError("INSERT INTO trials", {}, sqlite3.OperationalError("database or disk is full"))
        except sqlalchemy.exc.OperationalError as inner:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from inner
    except optuna.exceptions.StorageInternalError as err:
        assert "database or disk is full" in disk_full(err)
    assert disk_full(OSError(errno.ENOSPC, "No space left on device", "/runs/a/study.db")) == \
        "No space left on device: /runs/a/study.db"
    assert disk_full(RuntimeError("worker died: OSError: [Errno 28] No space left on device")) is not None
    assert disk_full(ValueError("a bug")) is None and disk_full(OSError(errno.EACCES, "denied")) is None
