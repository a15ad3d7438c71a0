"""Centroid initialisation: one registered function per method.

Each function takes the flat weights of one kernel and `k` and returns `k`
sorted centroids. Add a method with `register_init(name, fn)`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

#: `fn(weights_1d, k, seed) -> centroids` per registered name.
InitFn = Callable[[np.ndarray, int, int], np.ndarray]
_INITS: dict[str, InitFn] = {}


class CentroidInitialization(str, enum.Enum):
    """tfmot's names for the centroid initialisations (`init=` takes either spelling).

    Each member is the string of our own name, so
    `init=CentroidInitialization.KMEANS_PLUS_PLUS` and `init="kmeans++"` are
    the same argument.

    Example:

    >>> CentroidInitialization.resolve(CentroidInitialization.DENSITY_BASED)
    'density'
    """

    KMEANS_PLUS_PLUS = "kmeans++"
    LINEAR = "linear"
    DENSITY_BASED = "density"
    RANDOM = "random"

    @classmethod
    def resolve(cls, init: str | enum.Enum) -> str:
        """Our registered name for `init`: one of ours, a member, or tfmot's enum value.

        Args:
            init: `"kmeans++"`, `CentroidInitialization.LINEAR`, tfmot's
                `CentroidInitialization.DENSITY_BASED`, ...

        Returns:
            The registered name (a plain `str`).
        """
        if isinstance(init, enum.Enum):
            # tfmot's own enum (values "CentroidInitialization.LINEAR") or ours.
            name = init.name
            if name in cls.__members__:
                return cls[name].value
            init = init.value
        if isinstance(init, str):
            if init in _INITS:
                return str(init)
            short = init.rsplit(".", 1)[-1].upper()
            if short in cls.__members__:
                return cls[short].value
        raise ValueError(
            f"init must be one of {available_inits()} (or a CentroidInitialization). "
            f"Received: init={init!r}"
        )


def register_init(name: str, fn: InitFn) -> InitFn:
    """Register `fn(weights_1d, k, seed) -> centroids` under `name`.

    Args:
        name: the name `init=` (and a recipe's cluster stage) will take.
        fn: takes the flat float64 weights of one kernel, `k` and an integer
            seed, and returns `k` centroids (in any order).

    Returns:
        `fn`, unchanged.

    Example:

    >>> def evenly_spaced(w, k, seed):
    ...     return np.linspace(w.min(), w.max(), k)
    >>> _ = register_init("evenly_spaced", evenly_spaced)
    >>> initial_centroids(np.array([0.0, 1.0]), 3, "evenly_spaced")
    array([0. , 0.5, 1. ], dtype=float32)
    """
    _INITS[name] = fn
    return fn


def available_inits() -> list[str]:
    """Names of the registered methods.

    Returns:
        The names `init=` takes, in registration order.

    Example:

    >>> "kmeans++" in available_inits()
    True
    """
    return list(_INITS)


def initial_centroids(
    weights: ArrayLike, k: int, method: str = "kmeans++", seed: int = 0
) -> np.ndarray:
    """`k` sorted centroids for `weights` by `method`.

    Args:
        weights: array of any shape.
        k: number of clusters, at least 2.
        method: `"kmeans++"` (k-means with k-means++ seeding), `"linear"`
            (evenly spaced between min and max) or `"density"` (evenly spaced
            in the weights' cumulative distribution), `"random"` (uniform
            between min and max, as tfmot's RANDOM), or any name added with
            `register_init`.
        seed: random seed of `"kmeans++"` and `"random"`.

    Returns:
        float32 array of shape `(k,)`.

    Example:

    >>> initial_centroids(np.array([0., .1, .9, 1.]), 2, "kmeans++")
    array([0.05, 0.95], dtype=float32)
    """
    if method not in _INITS:
        raise ValueError(f"init must be one of {available_inits()}. Received: init={method!r}")
    w = np.asarray(weights, dtype=np.float64).ravel()
    return np.sort(_INITS[method](w, int(k), seed)).astype(np.float32)


def assign(weights: ArrayLike, centroids: ArrayLike) -> np.ndarray:
    """Index of the nearest centroid for every weight.

    Args:
        weights: array of any shape.
        centroids: 1-D array of centroid values.

    Returns:
        int32 array of the shape of `weights`.

    Example:

    >>> assign(np.array([0.0, 0.9]), np.array([0.0, 1.0]))
    array([0, 1], dtype=int32)
    """
    w = np.asarray(weights)
    c = np.asarray(centroids)
    return np.argmin(np.abs(w[..., None] - c), axis=-1).astype(np.int32)


def _linear(w, k, seed):
    return np.linspace(w.min(), w.max(), k)


def _random(w, k, seed):
    # tfmot's RANDOM: uniform between the smallest and the largest weight.
    return np.random.default_rng(seed).uniform(w.min(), w.max(), k)


def _density(w, k, seed):
    return np.quantile(w, (np.arange(k) + 0.5) / k)


def _kmeans_pp(w, k, seed, iterations=30, max_points=20_000):
    rng = np.random.default_rng(seed)
    sample = w if w.size <= max_points else rng.choice(w, max_points, replace=False)
    centroids = [rng.choice(sample)]
    for _ in range(1, k):
        d2 = np.min((sample[:, None] - np.array(centroids)[None, :]) ** 2, axis=1)
        total = d2.sum()
        centroids.append(rng.choice(sample, p=d2 / total) if total > 0 else rng.choice(sample))
    c = np.array(centroids)
    for _ in range(iterations):  # Lloyd's iterations in 1-D
        idx = np.argmin(np.abs(sample[:, None] - c[None, :]), axis=1)
        new = np.array([sample[idx == j].mean() if np.any(idx == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


register_init("kmeans++", _kmeans_pp)
register_init("linear", _linear)
register_init("density", _density)
register_init("random", _random)
