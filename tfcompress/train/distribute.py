"""Choosing the `tf.distribute` strategy, and checking a cluster before joining it."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

logger = logging.getLogger("tfcompress")


class ClusterConfigError(ValueError):
    """TF_CONFIG is malformed."""


class ClusterUnreachableError(TimeoutError):
    """A worker named in TF_CONFIG did not answer in time."""


def read_tf_config(environ: Mapping[str, str] | None = None) -> dict | None:
    """Parse and check the `TF_CONFIG` environment variable.

    Returns:
        The parsed dict, or `None` when TF_CONFIG is unset or empty.

    Raises:
        ClusterConfigError: naming what is wrong, with the value received.
    """
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ClusterConfigError(
            f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}). Expected e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": '
            f'"worker", "index": 0}}. Received: TF_CONFIG={raw[:200]!r}'
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ClusterConfigError(
            f"TF_CONFIG needs a 'cluster' object mapping job names to address lists. "
            f"Received: TF_CONFIG={raw[:200]!r}"
        )
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ClusterConfigError(
            f"TF_CONFIG needs a 'task' with 'type' and 'index' saying which worker this "
            f"process is. Received: TF_CONFIG={raw[:200]!r}"
        )
    jobs = config["cluster"]
    members = jobs.get(task["type"])
    if not isinstance(members, list) or not 0 <= int(task["index"]) < len(members):
        raise ClusterConfigError(
            f"TF_CONFIG's task {task['type']}:{task['index']} is not in its cluster "
            f"{jobs}. Received: TF_CONFIG={raw[:200]!r}"
        )
    for job, addresses in jobs.items():
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit():
                raise ClusterConfigError(
                    f"TF_CONFIG's cluster job '{job}' has the address {address!r}; expected "
                    "'host:port'."
                )
    return config


def _cluster_size(config):
    return sum(len(v) for v in config["cluster"].values())


def wait_for_cluster(config: dict, timeout: float = 60.0, poll: float = 0.25) -> None:
    """Block until every other task in `config` accepts TCP connections.

    `MultiWorkerMirroredStrategy` waits forever for a worker that never comes;
    this check runs first and fails in bounded time instead. While it waits,
    this process listens on its own port so its peers can see it too.

    Raises:
        ClusterUnreachableError: naming the tasks that never answered.
    """
    task = config["task"]
    own = config["cluster"][task["type"]][int(task["index"])]
    peers = [
        (job, i, address)
        for job, addresses in config["cluster"].items()
        for i, address in enumerate(addresses)
        if address != own
    ]
    listener = _listen(own)
    try:
        deadline = time.monotonic() + timeout
        waiting = list(peers)
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if not _answers(p[2])]
            if waiting:
                time.sleep(poll)
        if waiting:
            names = ", ".join(f"{job}:{i} at {address}" for job, i, address in waiting)
            raise ClusterUnreachableError(
                f"{len(waiting)} of the {len(peers)} other tasks in TF_CONFIG did not answer "
                f"within {timeout:.0f} s: {names}. Start every worker with its own TF_CONFIG "
                "(same cluster, its own task index), check the addresses and firewalls, or "
                "raise cluster_timeout."
            )
        # Stay visible a little longer, so a peer that saw nobody yet can see us.
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    finally:
        if listener is not None:
            listener.close()


def _listen(address):
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("" if host not in ("localhost", "127.0.0.1") else host, int(port)))
        sock.listen(16)
    except OSError:
        sock.close()
        return None  # our TF server may already hold it; peers reach that instead
    return sock


def _answers(address, timeout=0.5):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def strategy(
    devices: str | Sequence[str] = "auto", cluster_timeout: float = 60.0, log: bool = True
) -> tf.distribute.Strategy:
    """Return the `tf.distribute` strategy that fits this machine or cluster.

    - `TF_CONFIG` names a cluster of more than one task:
      `MultiWorkerMirroredStrategy`, after checking every worker answers
      within `cluster_timeout` seconds (instead of hanging), with the fixes
      that let Keras 3 `fit()` run under it.
    - Several local GPUs (or an explicit device list): `MirroredStrategy`.
    - Otherwise the default strategy (one device).

    Create it before the model, and build and compile the model inside
    `with strategy.scope():`.

    Args:
        devices: `"auto"`, or a list of device names such as
            `["/gpu:0", "/gpu:1"]` (or `["/cpu:0", "/cpu:1"]` for tests).
        cluster_timeout: seconds to wait for the other workers.
        log: log which strategy was chosen and its replica count.

    Returns:
        A `tf.distribute.Strategy`.

    Example:

    >>> strategy = tfcompress.train.strategy()
    >>> with strategy.scope():
    ...     model = build_model()
    ...     model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(dataset.batch(tfcompress.train.global_batch_size(64, strategy)))
    """
    import tensorflow as tf

    config = read_tf_config()
    if config is not None and _cluster_size(config) > 1:
        wait_for_cluster(config, timeout=cluster_timeout)
        from tfcompress.train import _keras_multiworker

        _keras_multiworker.apply()
        chosen = tf.distribute.MultiWorkerMirroredStrategy()
        why = f"TF_CONFIG names {_cluster_size(config)} tasks"
    elif devices != "auto":
        if not devices or isinstance(devices, str):
            raise ValueError(
                f"devices must be 'auto' or a non-empty list of device names. "
                f"Received: devices={devices!r}"
            )
        chosen = tf.distribute.MirroredStrategy(list(devices))
        why = f"devices {list(devices)}"
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            chosen = tf.distribute.MirroredStrategy([g.name for g in gpus])
            why = f"{len(gpus)} local GPUs"
        else:
            chosen = tf.distribute.get_strategy()
            why = "one device" if gpus else "no GPU: CPU"
    if log:
        logger.info(
            "tfcompress: %s with %d replica(s) (%s)",
            type(chosen).__name__,
            chosen.num_replicas_in_sync,
            why,
        )
    return chosen


def global_batch_size(per_replica_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Per-replica batch size times the number of replicas."""
    if per_replica_batch_size < 1:
        raise ValueError(
            f"per_replica_batch_size must be at least 1. Received: {per_replica_batch_size}"
        )
    return per_replica_batch_size * strategy.num_replicas_in_sync


def scale_learning_rate(learning_rate: float, strategy: tf.distribute.Strategy) -> float:
    """The linear scaling rule: learning rate times the number of replicas."""
    return learning_rate * strategy.num_replicas_in_sync


def check_model_in_scope(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Raise if `model`'s weights were created outside `strategy.scope()`.

    A model built before its strategy trains on one device only, silently.
    """
    for weight in model.weights:
        variable = getattr(weight, "value", weight)
        if not strategy.extended.variable_created_in_scope(variable):
            raise ValueError(
                f"Model '{model.name}' was built outside this {type(strategy).__name__}'s "
                f"scope (weight '{weight.path if hasattr(weight, 'path') else weight.name}'), "
                "so it would train on one device. Create the strategy first, then build (or "
                "load) and compile the model inside `with strategy.scope():`."
            )
