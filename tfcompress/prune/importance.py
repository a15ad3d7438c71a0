"""Gradient-based (first-order Taylor) importance: |w * dL/dw| summed over a few batches."""

import numpy as np

from tfcompress.prune import _registry
from tfcompress.prune.plan import flat_layers


def _batches(data, batch_size=32):
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        n = len(y)
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            xb = {k: v[sl] for k, v in x.items()} if isinstance(x, dict) else x[sl]
            yield xb, y[sl]
        return
    for batch in data:  # a tf.data.Dataset or an iterable of (x, y) batches
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise ValueError(
                "importance_data must give (x, y) batches. Received a batch of "
                f"type {type(batch).__name__}."
            )
        yield batch[0], batch[1]


def taylor_scores(model, layer_names, data, loss, batches=8):
    """First-order Taylor importance of the prunable weights of some layers.

    Args:
        model: a Keras 3 model (not changed).
        layer_names: the layers to score.
        data: `(x, y)` arrays or a dataset of `(x, y)` batches.
        loss: a Keras loss name or object.
        batches: how many batches to sum over.

    Returns:
        dict of layer name -> list of numpy arrays, one per prunable weight.

    Example:

    >>> scores = taylor_scores(model, ["dense"], (x, y), "sparse_categorical_crossentropy")
    """
    import keras
    import tensorflow as tf

    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"`importance_batches` must be a positive int. Received: {batches!r}")
    loss_fn = keras.losses.get(loss)
    by_name = {layer.name: layer for layer in flat_layers(model)}
    variables = []
    for name in layer_names:
        for sub, spec in _registry.prunable_targets(by_name[name]):
            variables.append((name, spec.variable(sub)))
    totals = [np.zeros(v.shape, "float32") for _, v in variables]
    seen = 0
    for x, y in _batches(data):
        if seen >= batches:
            break
        with tf.GradientTape() as tape:
            value = loss_fn(y, model(x, training=False))
        grads = tape.gradient(value, [v.value for _, v in variables])
        for total, (_, var), grad in zip(totals, variables, grads, strict=False):
            if grad is not None:
                total += np.abs(np.asarray(var) * np.asarray(tf.convert_to_tensor(grad)))
        seen += 1
    if seen == 0:
        raise ValueError("importance_data gave no batch: pass at least one (x, y) batch.")
    out = {name: [] for name in layer_names}
    for (name, _), total in zip(variables, totals, strict=False):
        out[name].append(total)
    return out
