"""Per-backend helpers for the layer tests: gradients by each backend's own autodiff."""

from __future__ import annotations

import keras
import numpy as np


def gradients(loss, *arrays):
    """Gradients of the scalar `loss(*tensors)` with respect to every input, as NumPy arrays.

    Uses the running backend's autodiff (TensorFlow's tape, `jax.grad`, torch's
    autograd), so the layer's custom gradient is exercised exactly as `fit` does.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = loss(*tensors)
        return [g.numpy() for g in tape.gradient(value, tensors)]
    if backend == "jax":
        import jax

        grads = jax.grad(loss, argnums=tuple(range(len(arrays))))(*arrays)
        return [np.asarray(g) for g in grads]
    if backend == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        loss(*tensors).backward()
        return [t.grad.numpy() for t in tensors]
    raise NotImplementedError(f"no gradient helper for the {backend} backend")
