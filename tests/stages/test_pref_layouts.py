"""Preference data as it exists on the hub: every layout of tests/stages/prefs/ becomes the same pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from objectives.errors import UserError
from objectives.schema import validate
from search.dpo_config import DPOStageConfig
from search.stages import prefdata
from search.stages.pref_layouts import detect_layout

PREFS = Path(__file__).with_name("prefs")
SYSTEM, QUESTION = "Du bist ein hilfreicher Assistent.", "Welches Wort passt: der, die oder das Haus?"
EXPECTED = {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            "chosen": [{"role": "assistant", "content": "Das Haus."}],
            "rejected": [{"role": "assistant", "content": "Der Haus."}]}
LAYOUTS = {"orca": "orca", "alpaca-output": "alpaca", "alpaca-chosen": "alpaca", "sharegpt": "sharegpt",
           "trl-strings": "trl", "trl-conversational": "trl", "ultrafeedback": "trl", "messages": "messages"}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_hub_layout_gives_the_same_conversational_pair(name):
    source = str(PREFS / f"{name}.jsonl")
    rows = prefdata.load_rows(source)
    assert detect_layout(set(rows[0]), source) == LAYOUTS[name]
    pairs, numbers, bad = prefdata.normalise(rows, source)
    assert bad.count == 0 and numbers == [1]
    assert pairs == [EXPECTED]


def test_own_column_names_are_mapped_with_dpo_data_columns():
    source = str(PREFS / "own-columns.jsonl")
    rows = prefdata.load_rows(source)
    with pytest.raises(UserError, match="unknown column layout.*dpo.data.columns"):
        prefdata.normalise(rows, source)
    columns = {"system": "anweisung", "question": "frage", "chosen": "gut", "rejected": "schlecht"}
    assert prefdata.normalise(rows, source, columns)[0] == [EXPECTED]
    with pytest.raises(UserError, match=r"dpo.data.columns names \['antwort'\]"):
        prefdata.normalise(rows, source, {**columns, "chosen": "antwort"})


def test_columns_map_only_known_roles():
    cfg = validate(DPOStageConfig, {"data": {"train": "x.jsonl", "columns": {"prompt": "frage"}}}, "dpo")
    assert cfg.data.columns == {"prompt": "frage"}
    with pytest.raises(UserError, match="unknown role"):
        validate(DPOStageConfig, {"data": {"columns": {"antwort": "gut"}}}, "dpo")


def test_a_broken_ranking_row_is_a_bad_row_not_a_crash():
    rows = [{"instruction": QUESTION, "output": ["Das Haus."]}, {"instruction": QUESTION, "output": ["A.", "B."]}]
    pairs, numbers, bad = prefdata.normalise(rows, "r")
    assert numbers == [2] and bad.reasons == {"output is not a [chosen, rejected] pair": [1]}
