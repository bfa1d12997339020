"""`bln_search.search`: train a model factory under BLN statistics configurations through Optuna.

Plain Python, no Typer or rich: the CLI wraps `search`, a notebook can call it
directly::

    import bln_search
    study = bln_search.search(build, data, study_name="digits", epochs=3)
    print(bln_search.leaderboard(study))

Policy lives here, so the Python API and the CLI behave alike: the direction
inferred from the metric, the automatic strategy and pruner, the workers'
share of a grid, and the test-data evaluation of the winners.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from bln_search.baselines import BASELINES, BLN
from bln_search.baselines import get as get_baseline
from bln_search.errors import (
    BLNSearchError,
    SearchFailed,
    SearchInterrupted,
    UsageError,
)
from bln_search.interrupts import check as check_interrupt
from bln_search.interrupts import ctrl_c_handled
from bln_search.loading import Data
from bln_search.manifest import (
    EXTENDABLE,
    STUDY_MANIFEST,
    Manifest,
    check_resume,
    extend,
    fingerprint_data,
    fingerprint_model,
    search_space_of,
)
from bln_search.observer import Forwarding, SearchObserver
from bln_search.preflight import preflight
from bln_search.pruning import AUTO as AUTO_PRUNER
from bln_search.pruning import make_pruner
from bln_search.sources import GridSource, SamplerSource, TrialSource
from bln_search.storage import open_storage
from bln_search.strategies import choose as choose_strategy
from bln_search.strategies._base import TrainingSettings
from bln_search.trials import ATTR_FAIL_MESSAGE, FAIL, STUDY_METRIC, TrainingSetup, is_duplicate

__all__ = ["infer_direction", "search", "worker_share"]

_MINIMIZE_HINTS = (
    "loss",
    "error",
    "mse",
    "mae",
    "mape",
    "crossentropy",
    "hinge",
    "divergence",
    "kld",
)
_MAXIMIZE_HINTS = ("acc", "auc", "precision", "recall", "f1", "iou", "r2")


def infer_direction(metric: str) -> str:
    """`"minimize"` for loss/error-like metric names, `"maximize"` for accuracy-like ones."""
    name = metric.lower().removeprefix("val_")
    if any(hint in name for hint in _MINIMIZE_HINTS):
        return "minimize"
    if any(hint in name for hint in _MAXIMIZE_HINTS):
        return "maximize"
    raise UsageError(
        f"cannot tell whether {metric!r} should be minimized or maximized: pass a `direction`"
    )


def worker_share(setups: int, workers: int, candidates: int = 16) -> int | None:
    """Configurations per shared training so that `workers` local workers split the grid evenly.

    None (a whole setup per training) when there are at least as many setups as workers.
    """
    if workers <= 1 or setups >= workers:
        return None
    return -(-candidates * setups // workers)


def _create_or_load_study(
    storage, study_name, settings, sampler, pruner, source: TrialSource, attrs, manifest: Manifest
) -> optuna.Study:
    """Creates the study with its manifest, or loads it and refuses a run it cannot take.

    The manifest is the first thing written to a new study, so a study without
    one was made by other code (or is being created this instant: `check_resume`
    waits a little for it) and is never written to.
    """
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction=settings.direction,
            sampler=sampler,
            pruner=pruner,
        )
        study.set_user_attr(STUDY_MANIFEST, manifest.as_attr())
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=study_name, storage=storage, sampler=sampler, pruner=pruner
        )
        created = False
        check_resume(study, manifest)
        extend(study, manifest)
        for key in EXTENDABLE:  # the plain attributes too, for readers of older studies
            known = study.user_attrs.get(key)
            if isinstance(known, list) and not set(attrs.get(key, [])) <= set(known):
                study.set_user_attr(key, sorted(set(known) | set(attrs[key])))
    source.prepare(study, created)
    return study


def search(
    model_factory: Callable[..., Any],
    data: Data,
    *,
    study_name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    epochs: int = 5,
    batch_size: int | Sequence[int] | None = None,
    metric: str = "val_loss",
    direction: str | None = None,
    seed: int = 0,
    seeds: int = 1,
    baselines: bool | Sequence[str] = False,
    sampler: optuna.samplers.BaseSampler | None = None,
    n_trials: int | None = None,
    pruner: optuna.pruners.BasePruner | str | None = None,
    strategy: str = "auto",
    patience: int | None = None,
    evaluation_batch_size: int | None = None,
    configs_per_training: int | None = None,
    workers: int = 1,
    test_data=None,
    artifacts=None,
    observer: SearchObserver | None = None,
    study_attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    """Searches the 16 statistics configurations of the BLN layers in `model_factory()`'s model.

    Args:
        model_factory: Returns a compiled `keras.Model` with at least one
            `BatchLayerNormalization`. A factory with a `trial` parameter gets
            the Optuna trial, to suggest hyper-parameters of its own.
        data: `bln_search.Data` (training and validation data).
        study_name: The Optuna study; an existing one is resumed.
        storage: An Optuna storage or database URL (default: `sqlite:///bln-search.db`).
        epochs: Training epochs; every epoch's `metric` is one intermediate value.
        batch_size: Training batch size for arrays (default 32), or several: the
            grid then runs once per batch size. A batched dataset sets its own.
        metric: A Keras log name, judged per epoch; a trial's value is its best epoch.
        direction: `"minimize"`/`"maximize"`; inferred from `metric` when omitted.
        seed, seeds: The grid runs every configuration under `seeds` seeds
            `seed, seed + 1, ...`; a seed fixes weights and data order alike, so
            configurations differ only in their flags.
        baselines: `True` for all of `bln_search.baselines.BASELINES` (the
            model with every BLN layer replaced by BatchNormalization,
            LayerNormalization, or nothing), or a list of their names; each is
            trained under every seed and batch size, and ranked alongside.
        sampler: `None` for the grid: every configuration exactly once per seed
            and batch size, also across resumes and workers. Otherwise any Optuna
            sampler, with `n_trials`.
        n_trials: The study's total trial budget for a sampler (resumes run the rest).
        pruner: Any Optuna pruner, fed each epoch's `metric`; a name from
            `bln_search.pruning.PRUNERS`; `"auto"` for the strategy's default
            (median for per-trial; racing for shared with one seed, none with several); `None` for none.
        patience: Stop a training once no live configuration has improved its
            best value for this many epochs (None: always train every epoch).
        evaluation_batch_size: Samples per validation step for array data, rounded
            down to a multiple of each training batch size (default: as many as a
            memory budget allows). The current-batch statistics are still computed
            per group of the training batch size, so the values do not depend on
            it; the training batch size itself evaluates batch by batch.
        strategy: `"shared"` trains once per seed and batch size and evaluates
            every configuration after each epoch; `"per-trial"` trains each
            trial; `"auto"` picks shared unless the factory takes a `trial`.
        configs_per_training: Shared strategy: at most this many configurations
            per training, so that several workers can split one grid.
        workers: How many local workers share this search (this one included):
            without `configs_per_training`, each shared training then takes an
            even share of the grid.
        test_data: `(x, y)` or a dataset: after the search, each batch size's
            winner is trained again and evaluated on it once; stored on the
            study as `test`, never used to choose.
        artifacts: Where trainings keep their checkpoints (each epoch's model, to resume a
            killed training from its last epoch, and each complete trial's best epoch,
            for `bln_search.trained_model`): an Optuna artifact store (e.g.
            `optuna.artifacts.Boto3ArtifactStore` for many machines), a folder (a shared
            filesystem), `False` for none, or `None`: the folder next to an SQLite
            storage (`bln-search.db` -> `bln-search.artifacts/`), none for a server.
        observer: Progress events (`SearchObserver`).
        study_attrs: Extra user attributes stored on a new study (e.g. the model spec).

    Returns:
        The `optuna.Study`. Raises `SearchInterrupted` on Ctrl-C (once the storage
        writes under way are done: the CLI's handling, where the program has Python's
        default one), `SearchFailed` if every trial of this run failed.
    """
    grid = sampler is None
    batch_sizes = _batch_sizes(data, batch_size)
    if not batch_sizes or any(b < 1 for b in batch_sizes) or seeds < 1:
        raise UsageError("batch sizes and the number of seeds must be at least 1")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UsageError(f"`seed` must be a whole number >= 0, got {seed!r}")
    variants = [
        BLN,
        *(
            BASELINES
            if baselines is True
            else [get_baseline(name).name for name in baselines or []]
        ),
    ]
    setups = [
        TrainingSetup(seed + i, b, v) for b in batch_sizes for i in range(seeds) for v in variants
    ]
    source = GridSource(setups) if grid else SamplerSource(setups, n_trials)
    strategy_class = choose_strategy(strategy, model_factory)
    if configs_per_training is not None and strategy_class.takes_trial_factory:
        raise UsageError(
            f"`configs_per_training` only applies to the shared strategy: "
            f"{strategy_class.name} workers take one trial at a time"
        )
    if configs_per_training is None and strategy_class.name == "shared":
        configs_per_training = worker_share(len(setups), workers)
    if pruner == AUTO_PRUNER:
        pruner = strategy_class.default_pruner
        if pruner == "racing" and seeds > 1:
            pruner = "none"  # a race per seed would leave configurations with some seeds only
    if pruner == "racing" and (seeds > 1 or strategy_class.name != "shared"):
        raise UsageError(
            "the racing pruner races the configurations of one shared training: it needs "
            "`strategy` shared and one seed (several seeds would prune differently per seed)"
        )
    if patience is not None and patience < 1:
        raise UsageError("`patience` must be at least 1 epoch")
    if evaluation_batch_size is not None and evaluation_batch_size < 1:
        raise UsageError("`evaluation_batch_size` must be at least 1")
    if isinstance(pruner, str):
        pruner = make_pruner(pruner, epochs)
    if not isinstance(storage, optuna.storages.BaseStorage):
        storage = open_storage(storage)
    checked_model, checked_trial = preflight(
        model_factory,
        data,
        metric,
        setups[0],
        baselines=variants[1:],
        evaluation_batch_size=evaluation_batch_size,
    )
    settings = TrainingSettings(
        epochs, metric, direction or infer_direction(metric), patience, evaluation_batch_size
    )
    manifest = Manifest(
        model=fingerprint_model(model_factory, checked_model, checked_trial is not None),
        data=fingerprint_data(data),
        epochs=epochs,
        metric=metric,
        direction=settings.direction,
        strategy=strategy_class.name,
        sampler="grid" if grid else "sampler",
        search_space=search_space_of(checked_trial),
        patience=patience,
        seeds=sorted({s.seed for s in setups}),
        batch_sizes=batch_sizes,
        baselines=variants[1:],
    )
    # Ctrl-C in a notebook or script waits for storage writes, as in the CLI.
    with warnings.catch_warnings(), ctrl_c_handled():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Shared trainings ask and tell; their heartbeats are recorded by bln-search (heartbeats.TrialHeartbeats).
        warnings.filterwarnings(
            "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
        )
        attrs = {
            STUDY_METRIC: settings.metric,
            "epochs": settings.epochs,
            "batch_size": setups[0].batch_size,
            "seed": setups[0].seed,
            "sampler": "grid" if grid else type(sampler).__name__,
            "strategy": strategy_class.name,
            "seeds": sorted({s.seed for s in setups}),
            "batch_sizes": batch_sizes,
            "baselines": variants[1:],
            **(study_attrs or {}),
        }
        study = _create_or_load_study(
            storage,
            study_name,
            settings,
            sampler or optuna.samplers.RandomSampler(seed=seed),
            pruner or optuna.pruners.NopPruner(),
            source,
            attrs,
            manifest,
        )
        from bln_search.checkpoints import open_artifact_store, record_artifact_folder

        artifact_store = open_artifact_store(artifacts, storage, study)
        record_artifact_folder(study, artifacts)
        outcomes = _Outcomes(observer)
        outcomes.on_search_start(study, source.planned())
        runner = strategy_class(
            model_factory,
            data,
            settings,
            storage=storage,
            first_model=(setups[0], checked_model),
            artifacts=artifact_store,
        )
        try:
            runner.run(study, source, outcomes, limit=configs_per_training)
            check_interrupt()  # one that landed where it could not be raised (a finalizer)
        except (KeyboardInterrupt, BLNSearchError) as error:
            source.recover(
                study
            )  # the stopped trials are FAIL now: queue their work again for whoever runs next
            if isinstance(error, KeyboardInterrupt):
                raise SearchInterrupted() from None
            raise
        outcomes.check()
    if test_data is not None:
        from bln_search.holdout import evaluate_winners

        evaluate_winners(model_factory, data, test_data, study)
    return study


def _batch_sizes(data: Data, batch_size) -> list[int]:
    """The real batch sizes: the requested ones for arrays, the dataset's own for a batched dataset."""
    requested = (
        None
        if batch_size is None
        else [batch_size]
        if isinstance(batch_size, int)
        else list(dict.fromkeys(batch_size))
    )
    if not data.is_dataset:
        for size in requested or []:
            data.check_batch_size(size, doing="search")
        return requested or [32]
    real = data.dataset_batch_size()
    if requested is not None and requested != [real]:
        raise UsageError(
            f"the training dataset comes batched at {real}, so it sets the batch size: leave "
            "`batch_size` out, or pass arrays to search several batch sizes"
        )
    return [real]


class _Outcomes(Forwarding):
    """Forwards events to the user's observer and remembers how this run's trials ended."""

    def __init__(self, observer: SearchObserver | None):
        super().__init__(observer)
        self.ended: list[optuna.trial.FrozenTrial] = []

    def on_trial_end(self, trial: optuna.trial.FrozenTrial) -> None:
        self.ended.append(trial)
        super().on_trial_end(trial)

    def check(self) -> None:
        ran = [t for t in self.ended if not is_duplicate(t)]
        if ran and all(t.state == FAIL for t in ran):
            reasons = {t.user_attrs.get(ATTR_FAIL_MESSAGE, "failed") for t in ran}
            raise SearchFailed(
                f"all {len(ran)} trials failed ({'; '.join(sorted(reasons))[:200]}); check the"
                f" learning rate and the data"
            )
