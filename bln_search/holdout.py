"""The test metric of the chosen configurations, measured after selection and never used for it.

For each batch size's winner (`bln_search.results.winners`), the model is
trained again as in the search (first seed, same epochs and batch size) under
that configuration and evaluated once on the test data. The result is stored on
the study (`test` user attribute) for the leaderboard and the report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from bln_search.config import FLAG_NAMES, StatisticsConfig
from bln_search.errors import DataError
from bln_search.loading import Data, _as_pair


def evaluate_winners(model_factory: Callable[..., Any], data: Data, test, study: optuna.Study) -> dict[str, dict]:
    """{batch size: {"config": ..., "metrics": {"test_loss": ..., ...}}}, also stored on the study."""
    from bln_search.results import winners
    from bln_search.training import evaluate, train

    test = _as_pair(test, "test")
    if isinstance(test, tuple) != (not data.is_dataset):
        raise DataError("test data must be (x, y) arrays when the training data are arrays, a tf.data.Dataset otherwise")
    epochs = int(study.user_attrs.get("epochs", 5))
    seed = int(study.user_attrs.get("seed", 0))
    results = {}
    for batch_size, row in winners(study).items():
        config = StatisticsConfig(*(bool(row[f]) for f in FLAG_NAMES))
        model, _ = train(model_factory, data, config, epochs=epochs, batch_size=batch_size, seed=seed)
        metrics = evaluate(model, test, batch_size, prefix="test_")
        results[str(batch_size)] = {"config": config.as_dict(), "label": config.label, "metrics": metrics}
    study.set_user_attr("test", results)
    return results
