"""Statistics configurations and the exported JSON document (no TensorFlow needed)."""

from __future__ import annotations

import json

import pytest

from bln_search.config import (
    ConfigError,
    StatisticsConfig,
    all_configurations,
    config_document,
    load_config,
)


def test_sixteen_distinct_configurations():
    configs = all_configurations()
    assert len(configs) == len(set(configs)) == 16
    assert {c.label for c in configs} >= {"-- -- -- --", "BM BV FM FV"}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_moving_mean": True}, "missing"),
        ({**StatisticsConfig().as_dict(), "extra": True}, "unknown"),
        ({**StatisticsConfig().as_dict(), "batch_moving_var": "yes"}, "true or false"),
        ([True, True, False, False], "mapping"),
    ],
)
def test_from_mapping_rejects_bad_values(values, message):
    with pytest.raises(ConfigError, match=message):
        StatisticsConfig.from_mapping(values)


def write(tmp_path, content):
    path = tmp_path / "best.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_load_config_round_trips_an_exported_document(tmp_path):
    config = StatisticsConfig(False, True, True, False)
    document = config_document(
        config, metric="val_loss", value=0.5, direction="minimize", study="s", trial=3
    )
    assert document["schema_version"] == 1 and set(document["versions"]) == {
        "bln_search",
        "keras",
        "optuna",
    }
    assert load_config(write(tmp_path, document)) == config


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ({"hello": "world"}, "not a bln-search configuration"),
        ([1, 2], "not a bln-search configuration"),
        (
            {"schema": "bln-search/best-config", "schema_version": 99, "config": {}},
            "schema_version 99",
        ),
        (
            {
                "schema": "bln-search/best-config",
                "schema_version": 1,
                "config": {"batch_moving_mean": True},
            },
            "missing flag",
        ),
    ],
)
def test_load_config_rejects_malformed_or_foreign_documents(tmp_path, content, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, content))


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.json")
