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
from bln_search.loading import Data, as_pair
from bln_search.trials import STUDY_TEST


def evaluate_winners(
    model_factory: Callable[..., Any], data: Data, test, study: optuna.Study
) -> dict[str, dict]:
    """{batch size: {"config": ..., "metrics": {"test_loss": ..., ...}}}, also stored on the study."""
    from bln_search.results import study_metric, winners
    from bln_search.training import evaluate, train

    test = as_pair(test, "test")
    if isinstance(test, tuple) != (not data.is_dataset):
        raise DataError(
            "test data must be (x, y) arrays when the training data are arrays, a "
            "tf.data.Dataset otherwise"
        )
    epochs = int(study.user_attrs.get("epochs", 5))
    seed = int(study.user_attrs.get("seed", 0))
    metric, direction = study_metric(study)
    results = {}
    for batch_size, row in winners(study).items():
        config = StatisticsConfig.from_row(row)
        trial = study.trials[int(row["trial"])]
        model, _, _ = train(  # as the search trained it, its best validation epoch kept
            model_factory,
            data,
            config,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            params={k: v for k, v in trial.params.items() if k not in FLAG_NAMES},
            metric=metric,
            direction=direction,
        )
        metrics = evaluate(model, test, batch_size, prefix="test_")
        results[str(batch_size)] = {
            "config": config.as_dict(),
            "label": config.label,
            "metrics": metrics,
        }
    study.set_user_attr(STUDY_TEST, results)
    return results


def load_test_data(spec: str, model_spec: str):
    """Test `(x, y)` from `module:fn`, an .npz with x_test and y_test, or a function of the model's module."""
    import numpy as np

    from bln_search.loading import call_user, module_of, resolve_callable, split_spec

    if spec.endswith(".npz"):
        try:
            with np.load(spec, allow_pickle=False) as archive:
                return as_pair((archive["x_test"], archive["y_test"]), "test")
        except (OSError, KeyError, ValueError) as error:
            raise DataError(f"cannot read x_test and y_test from {spec}: {error}") from None
    if ":" in spec:
        return as_pair(call_user(resolve_callable(spec), f"test data function {spec}"), "test")
    loader = getattr(module_of(model_spec), spec, None)
    if not callable(loader):
        raise DataError(f"{split_spec(model_spec)[0]} defines no function {spec}() for --test")
    return as_pair(call_user(loader, f"{spec}()"), "test")
