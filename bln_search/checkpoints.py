"""Checkpoints in Optuna's artifact store: where a killed training resumes, and each configuration's
best epoch, kept as a finished model.

A training writes one file per epoch, after that epoch's evaluations: the model as
Keras saves it (`.keras`: architecture, weights, optimizer state and the BLN layers'
population statistics). The newest file is the training's resume point; an older one
is kept while it is the best epoch so far of a configuration still in the race, and
for good once a complete trial references it as an Optuna artifact (so the dashboard
and `optuna.artifacts.get_all_artifact_meta` list it). Every other file is removed.

What a resume needs besides the file (the epoch, the files kept, each configuration's
values so far, the dropout layers' random states) is one study system attribute per
training, written after the file, so a process killed at any moment leaves a state
that points only at files that were written whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from bln_search.errors import StorageError, UsageError, first_line
from bln_search.interrupts import deferred
from bln_search.storage import set_trial_attrs
from bln_search.trials import ATTR_TRAINING, RUNNING, WORKER, Curve, TrainingSetup

STATE_PREFIX = "bln_search:checkpoint:"
"""Study system attribute prefix: one training's resume state, keyed by the training's id."""
STUDY_ARTIFACTS = "bln_search:artifacts"
"""Study system attribute: the artifact folder a run named with `artifacts=PATH`."""
ARTIFACT_ATTR_PREFIX = "artifacts:"
"""Where Optuna's `upload_artifact` puts an artifact's meta on a trial (read by
`optuna.artifacts.get_all_artifact_meta` and the dashboard). A file several trials
share is linked to each with this key instead of being uploaded again."""
ATTR_MODEL_EPOCH = "model_epoch"
"""Trial user attribute: the epoch whose model the trial's artifact holds (its best)."""


def default_artifact_path(storage) -> Path | None:
    """The folder next to an SQLite file (`bln-search.db` -> `bln-search.artifacts`); None for servers."""
    from bln_search.storage import sqlite_path

    if isinstance(storage, str):
        url = storage
    else:  # an RDBStorage, or Optuna's cache around one
        url = getattr(storage, "url", None) or getattr(
            getattr(storage, "_backend", None), "url", None
        )
    path = sqlite_path(url) if url else None
    return None if path is None else path.with_name(path.stem + ".artifacts")


def open_artifact_store(artifacts, storage, study: optuna.Study | None = None, create=True):
    """The artifact store for a study, or None when checkpoints are off.

    `artifacts`: an Optuna artifact store (e.g. `optuna.artifacts.Boto3ArtifactStore` for
    many machines), a folder path (a shared filesystem), `False` for none, or `None`: the
    folder the study recorded, else the folder next to an SQLite storage (a server
    storage then has none: several machines would each keep their own folder).
    """
    if artifacts is False:
        return None
    if artifacts is not None and not isinstance(artifacts, (str, os.PathLike)):
        return artifacts  # any object with Optuna's ArtifactStore methods
    if artifacts is None and study is not None:
        artifacts = study._storage.get_study_system_attrs(study._study_id).get(STUDY_ARTIFACTS)
    path = Path(artifacts) if artifacts is not None else default_artifact_path(storage)
    if path is None:
        return None
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"cannot use {path} for checkpoints: {error.strerror or first_line(error)}"
            ) from None
    elif not path.is_dir():
        return None
    return optuna.artifacts.FileSystemArtifactStore(path)


def record_artifact_folder(study: optuna.Study, artifacts) -> None:
    """Remembers a folder named with `artifacts=` on the study, so `export` finds it again."""
    if isinstance(artifacts, (str, os.PathLike)):
        folder = str(Path(artifacts).resolve())
        attrs = study._storage.get_study_system_attrs(study._study_id)
        if attrs.get(STUDY_ARTIFACTS) != folder:
            study._storage.set_study_system_attr(study._study_id, STUDY_ARTIFACTS, folder)


@dataclass
class Resumed:
    """Where a training continues: after `epoch` epochs, each job's values so far restored."""

    epoch: int
    curves: dict[str, Curve]


@dataclass
class TrainingCheckpoints:
    """One training's checkpoints: `resume` at its start, `save` after every epoch's
    evaluations, `link` when a job completes, `finish` at its end.

    Jobs are named by a key string (`job_key`); their curves are the `Curve`s the
    strategy keeps. A store of None makes every method a no-op.
    """

    store: Any
    study: optuna.Study
    setup: TrainingSetup
    training: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    files: dict[int, str] = field(default_factory=dict)  # epoch -> artifact id, all still kept
    linked: set[int] = field(default_factory=set)  # epochs a complete trial references
    _failed: bool = False
    model_damaged: bool = False
    """A checkpoint failed to load part-way: the model's weights are mixed, build it anew."""

    @property
    def active(self) -> bool:
        return self.store is not None and not self._failed

    # -- resume ---------------------------------------------------------------------------

    def resume(self, model, keys: list[str], direction: str) -> Resumed | None:
        """Loads the newest checkpoint of an earlier training of this setup that holds every
        key's curve, and takes its files over; None when there is none (train from epoch 1).

        Only a training whose trials were stopped leaves its work to be taken again, so a
        state that holds it all is a dead training's; one whose trials still run (a sampler
        that handed the same work to two workers at once) is never taken.
        """
        if not self.active:
            return None
        storage, study_id = self.study._storage, self.study._study_id
        live = _live_trainings(self.study)
        for name, state in _states(self.study).items():
            if (
                state.get("done")
                or state.get("claimed_by")
                or name.removeprefix(STATE_PREFIX) in live
                or tuple(state.get("setup", ())) != _setup_key(self.setup)
                or not set(keys) <= set(state.get("jobs", {}))
                or str(state.get("epoch")) not in state.get("files", {})
            ):
                continue
            storage.set_study_system_attr(study_id, name, {**state, "claimed_by": self.training})
            if _states(self.study)[name].get("claimed_by") != self.training:
                continue  # another worker claimed it at the same moment
            files = {int(epoch): aid for epoch, aid in state["files"].items()}
            try:
                self._load(model, files[int(state["epoch"])], state.get("seed_states") or [])
            except Exception as error:  # a missing or damaged file: the training starts over
                self.model_damaged = True
                warnings.warn(
                    f"cannot resume from checkpoint {files[int(state['epoch'])]} "
                    f"({first_line(error)}): training from epoch 1",
                    stacklevel=2,
                )
                return None
            self.files = files
            self.linked = _linked_epochs(self.study, files)
            curves = {}
            for key in keys:
                job = state["jobs"][key]
                curves[key] = Curve(direction, list(job["values"]), dict(job.get("others", {})))
            return Resumed(int(state["epoch"]), curves)
        return None

    def _load(self, model, artifact_id: str, seed_states: list) -> None:
        with self._downloaded(artifact_id) as path:
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            with warnings.catch_warnings():  # Keras only warns: a resume would lose the state
                warnings.filterwarnings("error", message="Skipping variable loading")
                model.load_weights(path)
        for variable, value in zip(_seed_variables(model), seed_states):
            variable.assign(value)

    @contextlib.contextmanager
    def _downloaded(self, artifact_id: str):
        with tempfile.TemporaryDirectory(prefix="bln-search-") as folder:
            path = os.path.join(folder, "model.keras")
            optuna.artifacts.download_artifact(
                artifact_store=self.store, file_path=path, artifact_id=artifact_id
            )
            yield path

    # -- during training ----------------------------------------------------------------

    def save(self, model, epoch: int, curves: dict[str, Curve], ending: bool) -> None:
        """After epoch `epoch` (1-based): writes its file if a live job's best is this epoch
        or the training goes on (the resume point), then the state, then removes files no
        one needs. `curves`: the live jobs'. A signal meanwhile waits: never half a state.
        """
        if not self.active:
            return
        best_epochs = {curve.best_epoch() for curve in curves.values() if curve.values}
        with deferred():
            if epoch in best_epochs or not ending:
                try:
                    self.files[epoch] = self._write(model)
                except OSError as error:  # a full disk: checkpoints stop, the search goes on
                    self._failed = True
                    warnings.warn(
                        f"checkpoints stopped: cannot write to the artifact store "
                        f"({error.strerror or first_line(error)}); the search goes on without "
                        "them",
                        stacklevel=2,
                    )
                    return
            if not ending:
                self._write_state(
                    {
                        "setup": list(_setup_key(self.setup)),
                        "epoch": epoch,
                        "files": {str(e): aid for e, aid in self.files.items()},
                        "jobs": {
                            key: {"values": curve.values, "others": curve.others}
                            for key, curve in curves.items()
                        },
                        "seed_states": [
                            [int(x) for x in _as_list(v)] for v in _seed_variables(model)
                        ],
                        "worker": WORKER,
                    }
                )
            self._remove_unneeded(best_epochs | ({epoch} if not ending else set()))

    def link(self, trial: optuna.Trial, curve: Curve) -> None:
        """Makes the file of `curve`'s best epoch an artifact of `trial` (told complete next)."""
        set_trial_attrs(trial, *self.link_attrs(curve))

    def link_attrs(self, curve: Curve) -> tuple[dict, dict]:
        """`link`'s (user, system) trial attributes, for a caller that writes them with others
        (before `finish`, which keeps the linked file)."""
        if not self.active or not curve.values:
            return {}, {}
        epoch = curve.best_epoch()
        artifact_id = self.files.get(epoch)
        if artifact_id is None:
            return {}, {}
        meta = optuna.artifacts.ArtifactMeta(
            artifact_id=artifact_id,
            filename=f"{self.training}-epoch-{epoch}.keras",
            mimetype="application/zip",
            encoding=None,
        )
        self.linked.add(epoch)
        return (
            {ATTR_MODEL_EPOCH: epoch},
            {ARTIFACT_ATTR_PREFIX + artifact_id: json.dumps(asdict(meta))},
        )

    def finish(self) -> None:
        """The training ended whole: only the linked files stay, and the state is closed."""
        if self.store is None:
            return
        with deferred():
            self._remove_unneeded(set())
            self._write_state({"done": True})

    def _remove_unneeded(self, needed: set[int]) -> None:
        for epoch in sorted(set(self.files) - needed - self.linked):
            with contextlib.suppress(Exception):  # already gone: nothing to free
                self.store.remove(self.files[epoch])
            del self.files[epoch]

    def _write(self, model) -> str:
        artifact_id = uuid.uuid4().hex
        with tempfile.TemporaryDirectory(prefix="bln-search-") as folder:
            path = os.path.join(folder, "model.keras")
            model.save(path)
            with open(path, "rb") as file:
                try:
                    self.store.write(artifact_id, file)
                except OSError:  # no half file left behind: no state will ever point at it
                    with contextlib.suppress(Exception):
                        self.store.remove(artifact_id)
                    raise
        return artifact_id

    def _write_state(self, state: dict) -> None:
        self.study._storage.set_study_system_attr(
            self.study._study_id, STATE_PREFIX + self.training, state
        )


def resume_epoch(study: optuna.Study) -> int:
    """The last epoch an unfinished training of `study` stored a checkpoint of (0: none),
    the epoch a re-run continues after: for monitors, tests and benchmarks."""
    return max(
        (int(state.get("epoch", 0)) for state in _states(study).values() if not state.get("done")),
        default=0,
    )


def job_key(config, params: dict | None = None) -> str:
    """A job's name in a checkpoint: its flags (None for a baseline) and the factory's own values."""
    return json.dumps(
        [None if config is None else config.as_dict(), sorted((params or {}).items())],
        default=repr,
    )


def trained_model(study: optuna.Study, artifacts=None, batch_size: int | None = None):
    """The search's own trained model of the winner: its best epoch's weights (population
    statistics included), the winning flags set. No training: the shared training's
    weights are valid under every configuration.

    `batch_size`: whose winner (default: the smallest batch size searched, as the export's
    `config`); `artifacts` as for `bln_search.search`. Returns `(model, trial)`, the trial
    whose model it is: evaluated on the validation data as in the search (batches of the
    training batch size), the model gives that trial's value.
    """
    from bln_search.errors import SearchFailed
    from bln_search.results import winners

    found = winners(study)
    if not found:
        raise SearchFailed(f"study {study.study_name!r} has no complete trial yet")
    if batch_size is None:
        batch_size = min(found)
    if batch_size not in found:
        raise UsageError(
            f"study {study.study_name!r} has no winner at batch size {batch_size} "
            f"(searched: {', '.join(map(str, sorted(found)))})"
        )
    trial = study.trials[int(found[batch_size]["trial"])]
    store = open_artifact_store(artifacts, study._storage, study, create=False)
    return model_of(trial, study._storage, store), trial


def model_of(trial: optuna.trial.FrozenTrial, storage, store):
    """The trained model a complete trial references (its best epoch), its flags set to the
    trial's configuration; `UsageError` when the study kept none."""
    import keras

    from bln_search.layer_tools import configure
    from bln_search.trials import config_of

    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=storage)
    if not metas or store is None:
        raise UsageError(
            f"trial {trial.number} kept no model: the search ran without an artifact store "
            "(checkpoints), or with another one (pass it with --artifacts)"
        )
    with tempfile.TemporaryDirectory(prefix="bln-search-") as folder:
        path = os.path.join(folder, "model.keras")
        try:
            optuna.artifacts.download_artifact(
                artifact_store=store, file_path=path, artifact_id=metas[-1].artifact_id
            )
            model = keras.saving.load_model(path)
        except Exception as error:
            raise UsageError(
                f"cannot read trial {trial.number}'s model {metas[-1].artifact_id} from the "
                f"artifact store: {first_line(error) or type(error).__name__}"
            ) from None
    config = config_of(trial)
    if config is not None:
        configure(model, config)
    return model


def _states(study: optuna.Study) -> dict[str, dict]:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k: v for k, v in attrs.items() if k.startswith(STATE_PREFIX) and isinstance(v, dict)}


def _live_trainings(study: optuna.Study) -> set[str]:
    """The trainings (`ATTR_TRAINING`) of the study's running trials."""
    return {
        t.user_attrs[ATTR_TRAINING]
        for t in study.get_trials(deepcopy=False, states=(RUNNING,))
        if ATTR_TRAINING in t.user_attrs
    }


def _linked_epochs(study: optuna.Study, files: dict[int, str]) -> set[int]:
    """The epochs among `files` that a trial already references (a training killed while
    telling its trials): never removed."""
    ids = {ARTIFACT_ATTR_PREFIX + aid: epoch for epoch, aid in files.items()}
    return {
        ids[key]
        for trial in study.get_trials(deepcopy=False)
        for key in trial.system_attrs
        if key in ids
    }


def _setup_key(setup: TrainingSetup) -> tuple:
    return (setup.seed, setup.batch_size, setup.variant)


def _seed_variables(model) -> list:
    """The random-number states of the model's dropout and noise layers, which `save` leaves out."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _as_list(variable) -> list:
    import keras

    return keras.ops.convert_to_numpy(variable).ravel().tolist()
