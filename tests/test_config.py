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
    training_plan,
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


def exported(**changes):
    """An export of a search at batch sizes 1 and 16 by a factory that searched `lr` too."""
    bm = StatisticsConfig(True, False, False, False)
    document = config_document(
        StatisticsConfig(False, False, False, False),
        metric="val_accuracy",
        value=0.9,
        direction="maximize",
        study="s",
        trial=0,
        extra={
            "training": {"epochs": 3, "batch_size": 1, "seed": 4},
            "params": {"lr": 0.0123},
            "by_batch_size": {
                "1": {"config": StatisticsConfig(False, False, False, False).as_dict(),
                      "params": {"lr": 0.0123}},
                "16": {"config": bm.as_dict(), "params": {"lr": 0.0456}},
            },
        },
    )  # fmt: skip
    document.update(changes)
    return document


def test_the_training_plan_defaults_to_how_the_winner_was_found():
    plan = training_plan(exported())
    assert (plan.batch_size, plan.epochs, plan.seed, plan.found_at) == (1, 3, 4, 1)
    assert plan.config == StatisticsConfig(False, False, False, False)
    assert plan.params == {"lr": 0.0123}
    assert (plan.metric, plan.direction) == ("val_accuracy", "maximize")
    overridden = training_plan(exported(), epochs=7, seed=0)
    assert (overridden.epochs, overridden.seed) == (7, 0)


def test_a_searched_batch_size_trains_its_own_winner():
    """`by_batch_size` was never read: batch size 16 trained the batch-size-1 winner."""
    plan = training_plan(exported(), batch_size=16)
    assert plan.config == StatisticsConfig(True, False, False, False)
    assert (plan.batch_size, plan.found_at, plan.params) == (16, 16, {"lr": 0.0456})
    untried = training_plan(exported(), batch_size=8)  # the exported winner, and it says so
    assert (untried.batch_size, untried.found_at, untried.config) == (8, 1, StatisticsConfig(
        False, False, False, False
    ))  # fmt: skip


def test_an_older_export_loads_and_refuses_only_what_it_cannot_know():
    old = exported(params=None, training={"epochs": 3, "batch_size": 1, "seed": 0})
    for entry in old["by_batch_size"].values():
        del entry["params"]
    assert training_plan(old).params == {}
    assert training_plan(old, batch_size=16).config == StatisticsConfig(True, False, False, False)
    with pytest.raises(ConfigError, match="values of the winner at batch size 1 only"):
        training_plan({**old, "params": {"lr": 0.0123}}, batch_size=16)
    with pytest.raises(ConfigError, match="does not record the search's epochs"):
        training_plan(exported(training={}, by_batch_size={}))
    bare = training_plan(exported(training={}, by_batch_size={}), epochs=2)
    assert (bare.batch_size, bare.epochs, bare.seed, bare.found_at) == (None, 2, 0, None)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"training": [3]}, '"training" must be JSON objects'),
        ({"params": "lr=0.1"}, '"params" must be JSON objects'),
        ({"by_batch_size": {"16": [1]}}, "by_batch_size 16 must be a JSON object"),
        ({"by_batch_size": {"16": {"config": {}}}}, "by_batch_size 16: statistics configuration"),
        # Each of these trained under a default or the wrong rule with exit 0.
        ({"training": {"epochs": 3, "batch_size": 1, "seed": "x"}}, 'training "seed" must be'),
        ({"training": {"epochs": 3, "batch_size": "abc"}}, 'training "batch_size" must be'),
        ({"training": {"epochs": 2.5, "batch_size": 1}}, 'training "epochs" must be'),
        ({"training": {"epochs": 3, "seed": -1}}, 'training "seed" must be a whole number >= 0'),
        ({"by_batch_size": {"abc": {}}}, "by_batch_size must be keyed by batch sizes"),
        ({"by_batch_size": {"-3": {}}}, "by_batch_size must be keyed by batch sizes"),
        ({"metric": {"name": "val_loss", "direction": "sideways"}}, '"direction" must be'),
        ({"metric": {"name": "loss", "direction": "minimize"}}, "must be a validation metric"),
    ],
)
def test_a_malformed_training_part_is_one_clear_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        training_plan(exported(**changes), batch_size=16)
