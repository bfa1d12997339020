"""Loading the user's model factory and data from `module:fn`, `file.py:fn` or `.npz` specs."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bln_search.errors import DataError, UserCodeError


def _search_after_libraries(folder: Path) -> None:
    """Lets the user's modules in `folder` be imported, after the installed packages: a file there
    named like a library (`optuna_integration.py`) must not replace it."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))


def _import_module(module_spec: str):
    if module_spec.endswith(".py") or "/" in module_spec or "\\" in module_spec:
        path = Path(module_spec)
        if not path.is_file():
            raise UserCodeError(f"file not found: {module_spec}")
        name = f"_bln_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        _search_after_libraries(path.resolve().parent)  # so the file can import its siblings
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise UserCodeError(
                f"importing {module_spec} failed: {type(error).__name__}: {error}"
            ) from error
        return module
    if "" not in sys.path:
        _search_after_libraries(Path.cwd())
    try:
        return importlib.import_module(module_spec)
    except ModuleNotFoundError as error:
        if error.name and module_spec.startswith(error.name):
            raise UserCodeError(f"module not found: {module_spec}") from error
        raise UserCodeError(f"importing {module_spec} failed: {error}") from error
    except Exception as error:
        raise UserCodeError(
            f"importing {module_spec} failed: {type(error).__name__}: {error}"
        ) from error


def split_spec(spec: str) -> tuple[str, str]:
    """`"pkg.mod:fn"` or `"path/file.py:fn"` -> `(module part, function name)`."""
    module_spec, sep, attr = spec.rpartition(":")
    if not sep or not module_spec or not attr or not attr.replace(".", "_").isidentifier():
        raise UserCodeError(f"expected MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    return module_spec, attr


def resolve_callable(spec: str) -> Callable[..., Any]:
    """The function a `module:fn` spec names."""
    module_spec, attr = split_spec(spec)
    module = _import_module(module_spec)
    target = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise UserCodeError(f"{module_spec} has no function {attr!r}")
    if not callable(target):
        raise UserCodeError(f"{spec} is not callable")
    return target


def module_of(spec: str):
    return _import_module(split_spec(spec)[0])


def call_user(fn: Callable[..., Any], what: str, *args, **kwargs):
    """Calls user code, turning anything it raises into a one-line `UserCodeError`.

    Anything: also `SystemExit` and other `BaseException`s that are not `Exception`s.
    An interrupt (Ctrl-C, SIGTERM, SIGHUP) passes, to stop the search as usual, and so
    does a `DataError` the function raised on purpose (a study's "dataset not downloaded").
    """
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, DataError):  # a DataError is user code saying what to do
        raise
    except SystemExit as error:
        raise UserCodeError(f"{what} called sys.exit({error.code!r})") from None
    except BaseException as error:
        raise UserCodeError(f"{what} raised {type(error).__name__}: {error}") from error


def takes_trial(factory: Callable[..., Any]) -> bool:
    """Whether the factory has a `trial` parameter, i.e. searches hyper-parameters of its own."""
    try:
        return "trial" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and C callables have no signature
        return False


def build_model(factory: Callable[..., Any], trial=None, name: str = "model factory"):
    """Calls the factory (with the Optuna `trial` if it takes one) and checks it returned
    a compiled Keras model with BLN layers."""
    import keras

    from bln_search.layer_tools import find_bln_layers

    model = (
        call_user(factory, name, trial=trial) if takes_trial(factory) else call_user(factory, name)
    )
    if not isinstance(model, keras.Model):
        raise UserCodeError(f"{name} must return a keras.Model, got {type(model).__name__}")
    if not getattr(model, "compiled", False):
        raise UserCodeError(
            f"{name} returned an uncompiled model: call model.compile(...) before returning it"
        )
    if not find_bln_layers(model):
        raise UserCodeError(
            f"{name} returned a model without any bln_search.BatchLayerNormalization layer"
        )
    return model


def create_state(model, data: Data) -> None:
    """Creates now the variables Keras leaves to the first traced step, so each is traced once.

    `fit` and `evaluate` create the optimizer's variables and the compiled metrics' while
    TensorFlow traces their first step, and a traced function that created variables is
    traced again: a third of a small model's `fit`, half of its first `evaluate`. The
    metrics are built by one eager test step on the first validation sample, their values
    then reset. A model not built yet (no weights before its first call) is left to Keras.
    """
    import keras

    if not model.built or keras.backend.backend() != "tensorflow":
        return  # the retrace is TensorFlow's; JAX's `test_step` is stateless (state, data)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    if not all(getattr(metric, "built", True) for metric in model.metrics):
        sample = data.first_sample()
        if sample is not None:
            model.test_step(sample)
            model.reset_metrics()


@dataclass
class Data:
    """Training and validation data: `(x, y)` array pairs, or batched `tf.data.Dataset`s."""

    train: Any
    validation: Any

    @property
    def is_dataset(self) -> bool:
        return not isinstance(self.train, tuple)

    def fit_kwargs(
        self, batch_size: int, validation: bool = True, evaluation_batch_size: int | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for `model.fit` (arrays are batched here, datasets come batched).

        `evaluation_batch_size`: the validation arrays' physical batch size (see
        `bln_search.evaluation`); datasets keep their own batches.
        """
        if self.is_dataset:
            kwargs = {"x": self.train}
        else:
            x, y = self.train
            kwargs = {"x": x, "y": y, "batch_size": batch_size}
        if validation:
            kwargs["validation_data"] = self.validation
            if not self.is_dataset and evaluation_batch_size:
                kwargs["validation_batch_size"] = evaluation_batch_size
        return kwargs

    @property
    def train_size(self) -> int | None:
        """The number of training samples, for arrays (None for a dataset)."""
        if self.is_dataset:
            return None
        import keras

        return len(keras.tree.flatten(self.train[0])[0])

    def check_batch_size(self, batch_size: int, doing: str = "train") -> None:
        """`DataError` for array data too small for `batch_size`: Keras would quietly use fewer."""
        samples = self.train_size
        if samples is not None and batch_size > samples:
            raise DataError(
                f"cannot {doing} at batch size {batch_size}: the training data has only "
                f"{samples} samples, so every batch would hold {samples}"
            )

    @property
    def validation_size(self) -> int | None:
        """The number of validation samples, for arrays (None for a dataset)."""
        if self.is_dataset:
            return None
        import keras

        return len(keras.tree.flatten(self.validation[0])[0])

    def dataset_batch_size(self) -> int:
        """The batch size a batched training dataset really trains with (its first batch's)."""
        import tensorflow as tf

        for batch in self.train.take(1):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            first = tf.nest.flatten(x)[0]
            if len(first.shape) == 0:
                break
            return int(first.shape[0])
        raise DataError("the training dataset is empty or not batched: batch it with .batch(n)")

    def first_sample(self):
        """The first validation sample as a batch of one (a dataset's first batch), or None."""
        if self.is_dataset:
            for batch in self.validation.take(1):
                return batch
            return None
        import keras

        return keras.tree.map_structure(lambda values: values[:1], self.validation)

    def validation_dataset(self, batch_size: int):
        """The validation data as one reusable, cached `tf.data.Dataset`.

        Arrays are cut into batches of `batch_size` in their order, as `fit`
        cuts `validation_data` (a multiple of the training batch size, evaluated
        under `grouped_inference`, gives the same `val_` metrics in fewer
        steps), without re-adapting the arrays on every call. A dataset is used
        as it comes.

        Autotuning is off: a cached in-memory pipeline has nothing to tune, and
        with it on every iterator waits for the autotuner's thread when it is
        freed, about 20 ms per `evaluate` (as much as evaluating 200 digits).
        """
        if self.is_dataset:
            return self.validation
        import tensorflow as tf

        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = tf.data.Dataset.from_tensor_slices(self.validation).batch(batch_size).cache()
        return dataset.with_options(options)


def as_pair(value, part: str):
    try:
        import tensorflow as tf

        if isinstance(value, tf.data.Dataset):
            return value
    except ImportError:  # pragma: no cover - tensorflow is a dependency
        pass
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise DataError(
            f"{part} data must be an (x, y) pair or a tf.data.Dataset, got {type(value).__name__}"
        )
    x, y = (np.asarray(v) if not isinstance(v, (dict, tuple, list)) else v for v in value)
    if not all(isinstance(v, np.ndarray) and v.ndim for v in (x, y)):  # a generator: 0-d
        raise DataError(
            f"{part} data: x and y must be arrays, got {type(value[0]).__name__} and "
            f"{type(value[1]).__name__}"
        )
    if len(x) == 0:
        raise DataError(f"{part} data is empty")
    if len(x) != len(y):
        raise DataError(f"{part} data: x has {len(x)} samples but y has {len(y)}")
    return (x, y)


def check_data(value) -> Data:
    """Validates `(train, validation)` as returned by a data function."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise DataError(
            (
                f"data must be a (train, validation) pair, each (x, y) or a tf.data.Dataset; got "
                f"{type(value).__name__}"
            )
            + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
        )
    train, validation = (
        as_pair(part, name) for part, name in zip(value, ("training", "validation"))
    )
    if isinstance(train, tuple) != isinstance(validation, tuple):
        raise DataError(
            "training and validation data must both be (x, y) arrays or both tf.data.Datasets"
        )
    if isinstance(train, tuple) and train[0].shape[1:] != validation[0].shape[1:]:
        raise DataError(
            f"training x has sample shape {train[0].shape[1:]} but validation x has "
            f"{validation[0].shape[1:]}"
        )
    return Data(train, validation)


def check_data_fits_model(data: Data, model) -> None:
    """A clear message when array shapes do not match the model's input."""
    if data.is_dataset:
        return
    expected = getattr(model, "input_shape", None)
    if not isinstance(expected, tuple) or not all(
        isinstance(d, (int, type(None))) for d in expected
    ):
        return  # multi-input models: let Keras check
    actual = data.train[0].shape[1:]
    wanted = expected[1:]
    if len(actual) != len(wanted) or any(w is not None and w != a for w, a in zip(wanted, actual)):
        raise DataError(f"data has sample shape {actual} but the model expects {wanted}")


def load_npz(path: str) -> Data:
    keys = ("x_train", "y_train", "x_val", "y_val")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path} is missing array(s) {', '.join(missing)} (needs {', '.join(keys)})"
                )
            arrays = {k: archive[k] for k in keys}
    except DataError:
        raise
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path} as an .npz archive: {error}") from error
    return check_data(((arrays["x_train"], arrays["y_train"]), (arrays["x_val"], arrays["y_val"])))


def load_data(data_spec: str | None, model_spec: str) -> Data:
    """Data from `--data` (`module:fn` or `.npz`), else from the model module's `load_data()`."""
    if data_spec is None:
        module = module_of(model_spec)
        loader = getattr(module, "load_data", None)
        if not callable(loader):
            raise DataError(
                f"no --data given and {split_spec(model_spec)[0]} defines no load_data() function"
            )
        return check_data(call_user(loader, "load_data()"))
    if data_spec.endswith(".npz"):
        return load_npz(data_spec)
    return check_data(call_user(resolve_callable(data_spec), f"data function {data_spec}"))
