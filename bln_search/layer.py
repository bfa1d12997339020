"""The Batch Layer Normalization layer (its callback and `configure`: `layer_tools.py`)."""

from __future__ import annotations

import operator

import keras
from keras import constraints, initializers, ops, regularizers

from bln_search.config import FLAG_NAMES, StatisticsConfig
from bln_search.layer_gradient import (
    cast,
    grouped_batch_moments,
    mixing_weights,
    moments,
    normalize_for_training,
    sample_weights,
    step_statistics,
    write,
)

_PACKAGE = "bln_search"


def _flag_property(name, statistic):
    """A bool attribute backed by the layer's flag variable (so switching retraces nothing)."""
    return property(
        lambda self: self._get_flag(name),
        lambda self, value: self._set_flag(name, value),
        doc=f"Use the population {statistic} at inference.",
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchLayerNormalization(keras.layers.Layer):
    """Batch Layer Normalization (BLN): a batch-size-weighted mix of batch and layer norm.

    For an input `x` of shape `(m, d1, ..., dk, C)` the layer computes, in training,

    - `mu_B, var_B`: mean and biased variance over the batch axis (axis 0), so
      every position and time step keeps its own batch statistics;
    - `mu_F, var_F`: mean and biased variance over the feature axis (last axis);
    - `x_hat = ((1/m - delta) * (x - mu_F) / sqrt(var_F + epsilon)
              + (1 - 1/m - delta) * (x - mu_B) / sqrt(var_B + epsilon)) / sqrt(C)`;
    - `y = gamma * x_hat + beta`, with `gamma` and `beta` of shape `(C,)`.

    Small batches therefore lean on layer normalization and large ones on batch
    normalization. Every training step also accumulates population statistics:
    the step's `mu_B` and `var_B` (with Bessel's correction `m / (m - 1)` when
    `m > 1`), and the batch averages of `mu_F` and `var_F`. With `momentum=None`
    (as published) the population is the plain average over the steps since the
    last reset (`ResetPopulationStatistics` resets each epoch, so after `fit` it
    describes the last epoch); with a float `momentum`, exponential moving
    averages. Before any training step the means are 0 and the variances 1.

    **At inference** each of the four statistics comes either from the population
    (flag `True`) or from the current batch (flag `False`); the mixing weights use
    the training batch size (the largest since the last reset), so any inference
    batch size works. The flags are layer state: `layer.batch_moving_mean = ...`
    or `bln_search.configure(model, config)` changes the next `predict`/`evaluate`
    without a rebuild or a retrace.

    **Grouped inference**: `inference_group_size=m` computes the current-batch
    statistics per group of `m` consecutive samples (a trailing remainder its own
    group), so one `evaluate` batch of `k * m` samples gives exactly the outputs
    of `k` batches of `m`: evaluating a small-batch model needs far fewer steps.
    Only the configurations that read a current batch statistic depend on it;
    training never does. Like the flags it is layer state (switching it retraces
    nothing); `bln_search.grouped_inference(model, m)` sets it for a while
    without it being saved.

    **Masks** (e.g. from `Embedding(mask_zero=True)`) leave masked samples out of
    the batch moments at each position, in training and at inference, and out of
    the population; a position masked in every sample of a step keeps its
    population value. The mixing weights still use the full batch size.
    **Frozen** (`trainable=False`), the layer normalizes in inference mode even in
    `fit` and its state never changes, as with `BatchNormalization`. It trains and
    infers on the TensorFlow, JAX and PyTorch backends with the same numbers.

    Args:
        batch_moving_mean: At inference, use the population batch mean (`True`)
            or the current batch's mean (`False`).
        batch_moving_var: Same for the batch variance.
        feature_moving_mean: Same for the feature mean.
        feature_moving_var: Same for the feature variance.
        momentum: `None` (default) to average the population statistics over the
            steps since the last reset, as published; a float in `[0, 1)` for
            exponential moving averages `pop = momentum * pop + (1 - momentum) * step`.
        epsilon: Small float added to the variances. Published value: `1e-3`.
        delta: Small float subtracted from both mixing weights. Published value:
            `1e-4`.
        inference_group_size: `None` (default) to compute the current-batch
            statistics at inference over the whole batch; an int `m >= 1` for
            groups of `m` consecutive samples. Saved with the model.
        center: If `True`, add the offset `beta`.
        scale: If `True`, multiply by `gamma`.
        beta_initializer: Initializer for `beta`.
        gamma_initializer: Initializer for `gamma`.
        beta_regularizer: Optional regularizer for `beta`.
        gamma_regularizer: Optional regularizer for `gamma`.
        beta_constraint: Optional constraint for `beta`.
        gamma_constraint: Optional constraint for `gamma`.
        **kwargs: Base layer keyword arguments (e.g. `name` and `dtype`).

    Call arguments:
        inputs: Input tensor of rank 2 or more whose non-batch dimensions are
            known when the layer is built.
        training: Python boolean. `True`: normalize with the current batch's
            statistics and update the population statistics (unless frozen).
            `False` (default): normalize with the statistics the flags select.
        mask: Optional boolean tensor of shape `inputs.shape[:-1]`; `False`
            leaves that sample out of the statistics at that position.

    Reference:

    - [Ziaee & Cano, 2022](https://arxiv.org/abs/2209.08898), "Batch Layer
      Normalization, A new normalization layer for CNNs and RNNs".
    """

    def __init__(
        self,
        batch_moving_mean=True,
        batch_moving_var=True,
        feature_moving_mean=False,
        feature_moving_var=False,
        momentum=None,
        epsilon=1e-3,
        delta=1e-4,
        inference_group_size=None,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if momentum is not None and not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"`momentum` must be None or in [0, 1). Received: momentum={momentum}")
        self.momentum = None if momentum is None else float(momentum)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self._inference_group_size = _group_size(inference_group_size)
        self._group_variable = None
        self.center = center
        self.scale = scale
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True

        self._flag_values = {}
        self._flag_variables = {}
        for name, value in zip(
            FLAG_NAMES,
            (batch_moving_mean, batch_moving_var, feature_moving_mean, feature_moving_var),
        ):
            self._set_flag(name, value)

        self.gamma = None
        self.beta = None

    # The four flags: Python booleans, mirrored into non-trainable weights once built
    # (so `call` reads them as state). Reading one never touches the device.
    def _get_flag(self, name):
        return self._flag_values[name]

    def _set_flag(self, name, value):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")
        self._flag_values[name] = value
        variable = self._flag_variables.get(name)
        if variable is not None:
            variable.assign(1.0 if value else 0.0)

    batch_moving_mean = _flag_property("batch_moving_mean", "batch mean")
    batch_moving_var = _flag_property("batch_moving_var", "batch variance")
    feature_moving_mean = _flag_property("feature_moving_mean", "feature mean")
    feature_moving_var = _flag_property("feature_moving_var", "feature variance")

    @property
    def inference_group_size(self):
        """The group size of the current-batch statistics at inference (`None`: the whole batch).

        Setting it is a choice the model keeps: it is saved with the model.
        """
        return self._inference_group_size

    @inference_group_size.setter
    def inference_group_size(self, value):
        self._inference_group_size = _group_size(value)
        self.set_group_for_inference(self._inference_group_size)

    def set_group_for_inference(self, group_size):
        """Groups the next inferences by `group_size` (`None`: whole batch) without saving it."""
        if self._group_variable is not None:
            self._group_variable.assign(float(_group_size(group_size) or 0))

    @property
    def statistics_config(self) -> StatisticsConfig:
        """The four flags as a `StatisticsConfig`."""
        return StatisticsConfig(*(self._get_flag(name) for name in FLAG_NAMES))

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(
                f"BatchLayerNormalization needs inputs of rank >= 2 (batch, ..., features). "
                f"Received: input_shape={input_shape}"
            )
        inner = tuple(input_shape[1:])
        if any(dim is None for dim in inner):
            raise ValueError(
                "BatchLayerNormalization keeps batch statistics per position, so every non-batch "
                f"dimension must be known. Received: input_shape={input_shape}"
            )
        channels = inner[-1]
        if self.scale:
            self.gamma = self.add_weight(
                shape=(channels,),
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=(channels,),
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        feature_shape = inner[:-1] + (1,)

        def state(name, shape, initializer, dtype=None):
            return self.add_weight(
                shape=shape,
                name=name,
                initializer=initializer,
                dtype=dtype,
                trainable=False,
                autocast=False,
            )

        self.moving_batch_mean = state("moving_batch_mean", inner, "zeros")
        self.moving_batch_variance = state("moving_batch_variance", inner, "ones")
        self.moving_feature_mean = state("moving_feature_mean", feature_shape, "zeros")
        self.moving_feature_variance = state("moving_feature_variance", feature_shape, "ones")
        # Steps averaged since the last reset, and the largest batch among them: float32
        # whatever the policy (a bfloat16 count stops at 256).
        self.moving_steps = state("moving_steps", (), "zeros", "float32")
        self.training_batch_size = state("training_batch_size", (), "zeros", "float32")
        for name in FLAG_NAMES:
            self._flag_variables[name] = state(
                name, (), initializers.Constant(1.0 if self._flag_values[name] else 0.0)
            )
        # Steps per position: a position masked in every sample of a step skips it.
        self.moving_position_steps = state(
            "moving_position_steps", feature_shape, "zeros", "float32"
        )
        # Last, and never saved: the configured value comes back through `get_config`.
        self._group_variable = state(
            "inference_group_size",
            (),
            initializers.Constant(float(self._inference_group_size or 0)),
            "float32",
        )
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={-1: channels})

    def _saved_variables(self):
        """Every variable but the inference grouping, which `get_config` carries instead."""
        variables = self._trainable_variables + self._non_trainable_variables
        return [v for v in variables if v is not self._group_variable]

    def save_own_variables(self, store):
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store):
        """Loads the weights, including files saved before `moving_position_steps` existed."""
        variables = self._saved_variables()
        if len(store.keys()) == len(variables) - 1:  # older layout: the per-position counter last
            for i, variable in enumerate(variables[:-1]):
                variable.assign(store[f"{i}"])
            steps = ops.cast(self.moving_steps, self.moving_position_steps.dtype)
            self.moving_position_steps.assign(
                ops.broadcast_to(steps, self.moving_position_steps.shape)
            )
        elif len(store.keys()) == len(variables):
            for i, variable in enumerate(variables):
                variable.assign(store[f"{i}"])
        else:
            raise ValueError(
                f"Layer {self.name!r} expected {len(variables)} variables, "
                f"but the file holds {len(store.keys())}."
            )
        for name, variable in self._flag_variables.items():  # the Python side follows the file
            self._flag_values[name] = bool(ops.convert_to_numpy(variable) > 0.5)

    def reset_population_statistics(self):
        """Restarts the population averages: the next training step starts a new average.

        The current values stay readable until that step, so inference between a
        reset and the next step still sees the previous epoch's statistics.
        """
        if self.built:
            self.moving_steps.assign(0.0)
            self.moving_position_steps.assign(ops.zeros(self.moving_position_steps.shape))

    def call(self, inputs, training=None, mask=None):
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = cast(inputs, dtype)
        channels = x.shape[-1]
        gamma = cast(self.gamma, dtype) if self.scale else ops.ones((channels,), dtype)
        beta = cast(self.beta, dtype) if self.center else ops.zeros((channels,), dtype)
        # A static batch size stays a Python float, so the arithmetic on it costs no ops.
        static = x.shape[0]
        batch_size = float(static) if static is not None else ops.cast(ops.shape(x)[0], dtype)
        weights = None if mask is None else sample_weights(mask, x)

        if training and self.trainable:
            mixing = mixing_weights(batch_size, channels, self.delta)
            outputs, statistics, count = normalize_for_training(
                x, gamma, beta, weights, mixing, self.epsilon
            )
            self._update_population(statistics, weights, count, batch_size, dtype)
            return cast(outputs, self.compute_dtype)

        feature_mean, feature_var, _ = moments(x, -1)
        batch_mean, batch_var = grouped_batch_moments(x, self._group_variable, weights)

        def pick(flag, population, current):
            return ops.where(self._flag_variables[flag] > 0.5, cast(population, dtype), current)

        batch_mean = pick("batch_moving_mean", self.moving_batch_mean, batch_mean)
        batch_var = pick("batch_moving_var", self.moving_batch_variance, batch_var)
        feature_mean = pick("feature_moving_mean", self.moving_feature_mean, feature_mean)
        feature_var = pick("feature_moving_var", self.moving_feature_variance, feature_var)
        trained_size = cast(self.training_batch_size, dtype)
        feature_weight, batch_weight = mixing_weights(
            ops.where(trained_size > 0, trained_size, batch_size), channels, self.delta
        )
        feature_scale = feature_weight * ops.rsqrt(feature_var + self.epsilon)
        batch_scale = batch_weight * ops.rsqrt(batch_var + self.epsilon)
        # Not folded into `x * b + offset`: with a tiny current-batch variance (m = 1)
        # that form cancels large terms and loses the digits the grouping must keep.
        outputs = (
            gamma * ((x - feature_mean) * feature_scale + (x - batch_mean) * batch_scale) + beta
        )
        return cast(outputs, self.compute_dtype)

    def _update_population(self, statistics, weights, count, batch_size, dtype):
        """Folds one step into the population; a position with no kept sample is skipped.

        `write` casts to each variable's dtype (as `assign` does), so nothing is cast here.
        """
        *values, count = step_statistics(*statistics, weights, count, batch_size)
        position_steps = cast(self.moving_position_steps, dtype)
        seen = 1.0 if weights is None else ops.cast(count > 0, dtype)
        if self.momentum is None:
            rate = seen / (position_steps + 1.0)
        else:
            rate = seen * (1.0 - self.momentum)
        population = (
            self.moving_batch_mean,
            self.moving_batch_variance,
            self.moving_feature_mean,
            self.moving_feature_variance,
        )
        for variable, value in zip(population, values):
            current = cast(variable, dtype)
            write(variable, current + rate * (value - current))
        steps = cast(self.moving_steps, dtype)
        # The largest batch since the last reset: `sign(steps)` is 0 right after one.
        previous = cast(self.training_batch_size, dtype) * ops.sign(steps)
        write(self.training_batch_size, ops.maximum(previous, batch_size))
        write(self.moving_steps, steps + 1.0)
        write(self.moving_position_steps, position_steps + seen)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({name: self._get_flag(name) for name in FLAG_NAMES})
        config.update(
            {
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "inference_group_size": self._inference_group_size,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint),
            }
        )
        return config


def _group_size(value):
    """`None` or an int >= 1 (0 and `None` both mean the whole batch)."""
    if value is None:
        return None
    try:
        size = operator.index(value)  # ints, NumPy integers; not floats
    except TypeError:
        size = -1
    if isinstance(value, bool) or size < 0:
        raise ValueError(f"`inference_group_size` must be None or an int >= 1. Received: {value!r}")
    return size or None
