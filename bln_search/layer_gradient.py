"""BLN's arithmetic: moments (masked or not), mixing weights, one step's population
statistics, and the training pass with a closed-form gradient."""

import keras
from keras import ops

try:  # Keras has no public "inside stateless_call?" test; without it, `write` assigns.
    from keras.src.backend.common.stateless_scope import in_stateless_scope
except ImportError:  # pragma: no cover

    def in_stateless_scope():
        return True


def cast(value, dtype):
    """`ops.cast` only where the dtype differs: on eager PyTorch every op has a cost."""
    if keras.backend.standardize_dtype(value.dtype) == dtype:
        return value.value if isinstance(value, keras.Variable) else value
    return ops.cast(value, dtype)


def mean_over(x, axis, keepdims=False):
    """`ops.mean` over `axis`; on PyTorch, the tensor's own `mean` (what `ops.mean` calls).

    On eager PyTorch every keras.ops call costs some 10 to 30 us whatever the
    tensor's size (`ops.mean` resolves dtypes each time), and a training step
    takes a dozen reductions per layer; the arithmetic is the same.
    """
    if keras.backend.backend() == "torch":
        return x.mean(axis, keepdim=keepdims)
    return ops.mean(x, axis=axis, keepdims=keepdims)


def reduce_sum(x, axis, keepdims=False):
    """`ops.sum` over `axis`; on PyTorch, the tensor's own `sum`, as `mean_over`."""
    if keras.backend.backend() == "torch":
        return x.sum(axis, keepdim=keepdims)
    return ops.sum(x, axis=axis, keepdims=keepdims)


def write(variable, value):
    """`variable.assign(value)`; on eager PyTorch, the in-place copy that `assign` ends with.

    There `assign` is `variable.value.copy_(value)` after some 15 us of conversions
    and checks, and a training step writes seven state variables per layer. `value`
    has the variable's shape, and the copy casts it to the variable's dtype as
    `assign` does; the layer's state never autocasts, so `variable.value` is the
    variable's own tensor. Inside `stateless_call` (which records assignments
    instead of making them) and under `torch.compile`, it assigns.
    """
    if keras.backend.backend() == "torch":
        import torch

        if not in_stateless_scope() and not torch.compiler.is_compiling():
            with torch.no_grad():
                variable.value.copy_(value)
            return
    variable.assign(value)


def sample_weights(mask, x):
    """A Keras mask of shape `x.shape[:-1]` as 0/1 weights of shape `(m, d1, ..., dk, 1)`."""
    if len(mask.shape) != len(x.shape) - 1:
        raise ValueError(
            "The mask must have one dimension less than the inputs. "
            f"Received: mask.shape={mask.shape}, inputs.shape={x.shape}"
        )
    weights = ops.cast(ops.expand_dims(mask, -1), x.dtype)
    return ops.broadcast_to(weights, tuple(ops.shape(x)[:-1]) + (1,))


def moments(x, axis):
    """Mean and biased variance over `axis` (kept), in two passes on every backend, and `x`
    minus the mean (which the training pass normalizes, so it is computed once).

    `keras.ops.moments` on PyTorch uses `E[x^2] - E[x]^2`, which loses digits to
    cancellation when the mean is large against the spread; TensorFlow and JAX
    subtract the mean first, as this does.
    """
    mean = mean_over(x, axis, keepdims=True)
    centered = x - mean
    return mean, mean_over(centered * centered, axis, keepdims=True), centered


def batch_moments(x, weights=None):
    """Per position: mean and biased variance over axis 0, the number of samples, and `x`
    minus the mean (which the training pass normalizes, so it is computed once).

    With `weights` (0/1, from `sample_weights`) only the kept samples count; a
    position with none gets mean 0 and variance 0. Returns `(mean, var, count,
    centered)` with `count` of shape `(d1, ..., dk, 1)`, or `None` without weights.
    """
    if weights is None:
        mean = mean_over(x, 0)
        centered = x - mean
        return mean, mean_over(centered * centered, 0), None, centered
    count = reduce_sum(weights, 0)
    divisor = ops.maximum(count, 1.0)
    mean = reduce_sum(weights * x, 0) / divisor
    centered = x - mean
    return mean, reduce_sum(weights * (centered * centered), 0) / divisor, count, centered


def grouped_batch_moments(x, group_size, weights=None):
    """Per sample and position: mean and biased variance of its group, as `(m, d1, ..., C)`.

    The groups are `group_size` consecutive samples, a trailing remainder its own
    group, so one batch of k groups gives exactly the moments of k separate
    batches ("ghost" batches). `group_size` is a scalar tensor: 0 (or anything
    >= the batch) makes the whole batch one group, so switching it retraces
    nothing. With `weights`, as `batch_moments` (a group with no kept sample at
    a position gets mean 0 and variance 0).
    """
    if weights is None and _reshape_allowed():
        return _grouped_moments_by_reshape(x, group_size)
    static = x.shape[0]
    size = static if static is not None else ops.shape(x)[0]
    index = ops.arange(size, dtype="int32")
    group_size = ops.cast(group_size, "int32")
    whole = max(size, 1) if isinstance(size, int) else ops.maximum(size, 1)
    group = index // ops.where(group_size > 0, group_size, whole)

    def group_sum(value):
        # Unsorted: TensorFlow's sorted segment sum has no XLA kernel (jit_compile).
        sums = ops.segment_sum(value, group, num_segments=size)
        return ops.take(sums, group, axis=0)

    if weights is None:
        ones = ops.ones((size,) + (1,) * (len(x.shape) - 1), x.dtype)
        count = group_sum(ones)
        mean = group_sum(x) / count
        return mean, group_sum(ops.square(x - mean)) / count
    divisor = ops.maximum(group_sum(weights), 1.0)
    mean = group_sum(weights * x) / divisor
    return mean, group_sum(weights * ops.square(x - mean)) / divisor


def _reshape_allowed() -> bool:
    """TensorFlow outside XLA: shapes there may depend on a variable's value."""
    if keras.backend.backend() != "tensorflow":
        return False  # JAX traces shapes statically; eager PyTorch keeps the segment sums
    try:
        import tensorflow as tf
        from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext
    except ImportError:  # pragma: no cover - TensorFlow moved it: the general path
        return False
    return tf.executing_eagerly() or not GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def _grouped_moments_by_reshape(x, group_size):
    """`grouped_batch_moments` without masks, on TensorFlow: the k whole groups as one
    `(k, g, ...)` view reduced over its second axis, the remainder reduced on its own.

    The same moments as the segment sums (to float rounding, 1e-7 here), in a
    third of the time: on CPU an unsorted segment sum is a scatter, and its
    result must be gathered back to every sample.
    """
    import tensorflow as tf

    size = tf.shape(x)[0]
    group_size = tf.cast(group_size, tf.int32)
    group = tf.where(group_size > 0, tf.minimum(group_size, size), tf.maximum(size, 1))
    whole = size // group * group
    head, tail = x[:whole], x[whole:]
    groups = tf.reshape(head, tf.concat([[size // group, group], tf.shape(x)[1:]], 0))
    head_mean = tf.reduce_mean(groups, 1, keepdims=True)
    head_var = tf.reduce_mean(tf.square(groups - head_mean), 1, keepdims=True)
    tail_mean = tf.reduce_mean(tail, 0, keepdims=True)  # an empty tail: NaN, spread to no row
    tail_var = tf.reduce_mean(tf.square(tail - tail_mean), 0, keepdims=True)

    def spread(of_groups, of_tail):
        per_sample = tf.reshape(tf.broadcast_to(of_groups, tf.shape(groups)), tf.shape(head))
        return tf.concat([per_sample, tf.broadcast_to(of_tail, tf.shape(tail))], 0)

    return spread(head_mean, tail_mean), spread(head_var, tail_var)


def mixing_weights(batch_size, channels, delta):
    """`(1/m - delta) / sqrt(C)` and `(1 - 1/m - delta) / sqrt(C)`."""
    inv_sqrt_c = 1.0 / float(channels) ** 0.5
    return (1.0 / batch_size - delta) * inv_sqrt_c, (1.0 - 1.0 / batch_size - delta) * inv_sqrt_c


def step_statistics(batch_mean, batch_var, feature_mean, feature_var, weights, count, m):
    """One training step's statistics for the population, and the kept samples per position.

    The batch variance gets Bessel's correction `n / (n - 1)` with `n` the kept
    samples at each position (none when `n <= 1`); the feature moments are averaged
    over the kept samples. Without `weights` every position keeps all `m` samples
    (`m` a Python float where the batch size is static, a scalar tensor otherwise).
    """
    if weights is None:
        count = m
        mean_feature_mean = mean_over(feature_mean, 0)
        mean_feature_var = mean_over(feature_var, 0)
    else:
        divisor = ops.maximum(count, 1.0)
        mean_feature_mean = reduce_sum(weights * feature_mean, 0) / divisor
        mean_feature_var = reduce_sum(weights * feature_var, 0) / divisor
    if isinstance(count, float):  # a static batch size: Python arithmetic, no ops
        bessel = count / (count - 1.0) if count > 1.0 else 1.0
    else:
        bessel = ops.where(count > 1.0, count / ops.maximum(count - 1.0, 1.0), 1.0)
    return batch_mean, batch_var * bessel, mean_feature_mean, mean_feature_var, count


def normalize_for_training(x, gamma, beta, weights, mixing, epsilon):
    """BLN's training forward pass with a hand-written backward pass, and the step's moments.

    Returns `(outputs, (batch_mean, batch_var, feature_mean, feature_var), count)`,
    `count` the kept samples per position with `weights` (else `None`). The moments
    are taken from `x` beside the custom gradient (they feed the population statistics
    too), in two passes whose centred input is the one the output normalizes; the
    custom gradient covers the output only, so every backend's `custom_gradient`
    (TensorFlow, JAX, PyTorch) sees one output and one upstream gradient. Its
    backward is the total derivative with respect to `x`, the moments' dependence
    on `x` included. With `weights`, masked samples are left out of the batch
    moments (`d mean / d x_j = w_j / n`), and the formula reduces to the unmasked
    one when every weight is 1.

    Autodiff of the two normalizations builds about twice the graph a single
    BatchNormalization does; the closed-form gradient below (the usual
    normalization backward, once per axis) is faster on every backend. The
    mixing weight and the inverse deviation of each axis are folded into one
    small scale tensor, so the full-size work is two products and a sum.
    """
    reduce_axes = list(range(len(x.shape) - 1))
    feature_weight, batch_weight = mixing
    x = ops.convert_to_tensor(x)  # `stateless_call` passes its inputs as given, NumPy too
    constant = ops.stop_gradient(x)  # the moments need no graph: the backward is closed-form
    feature_mean, feature_var, feature_centered = moments(constant, -1)
    batch_mean, batch_var, count, batch_centered = batch_moments(constant, weights)
    feature_rstd = ops.rsqrt(feature_var + epsilon)
    batch_rstd = ops.rsqrt(batch_var + epsilon)
    feature_scale = feature_weight * feature_rstd  # (m, d1, ..., dk, 1)
    batch_scale = batch_weight * batch_rstd  # (d1, ..., dk, C)

    def batch_average(value):
        if weights is None:
            return mean_over(value, 0)
        return weights * (reduce_sum(value, 0) / ops.maximum(count, 1.0))

    @ops.custom_gradient
    def forward(x, gamma, beta):
        x_hat = feature_centered * feature_scale + batch_centered * batch_scale
        outputs = x_hat * gamma + beta

        def backward(*args, upstream=None):
            grad = upstream if upstream is not None else args[0]
            g = grad * gamma
            # Per axis: scale * (g - mean(g) - x_norm * mean(g * x_norm)), x_norm = centered * rstd.
            grad_batch = batch_scale * (
                g
                - batch_average(g)
                - batch_centered * (batch_rstd * batch_rstd * batch_average(g * batch_centered))
            )
            grad_feature = feature_scale * (
                g
                - mean_over(g, -1, keepdims=True)
                - feature_centered
                * (feature_rstd * feature_rstd * mean_over(g * feature_centered, -1, keepdims=True))
            )
            return (
                grad_batch + grad_feature,
                reduce_sum(grad * x_hat, reduce_axes),
                reduce_sum(grad, reduce_axes),
            )

        return outputs, backward

    outputs = forward(x, gamma, beta)
    return outputs, (batch_mean, batch_var, feature_mean, feature_var), count
