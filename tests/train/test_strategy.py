import json
import socket
import time

import pytest

from tfcompress import train
from tfcompress.train import ClusterConfigError, ClusterUnreachableError


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(ports, index=0):
    return {
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index},
    }


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
        ('{"cluster": {"worker": ["a:1"]}}', "needs a 'task'"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
            "task worker:3 is not in its cluster",
        ),
        (
            '{"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}',
            "expected 'host:port'",
        ),
    ],
)
def test_malformed_tf_config_is_named(raw, message):
    with pytest.raises(ClusterConfigError, match=message):
        train.read_tf_config({"TF_CONFIG": raw})


def test_no_tf_config():
    assert train.read_tf_config({}) is None


def test_dead_worker_fails_in_bounded_time():
    dead = _free_port()
    start = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=f"worker:1 at 127.0.0.1:{dead}"):
        train.wait_for_cluster(_config([_free_port(), dead]), timeout=2)
    assert time.monotonic() - start < 10


def test_live_worker_is_seen():
    with socket.socket() as peer:
        peer.bind(("127.0.0.1", 0))
        peer.listen(4)
        train.wait_for_cluster(_config([_free_port(), peer.getsockname()[1]]), timeout=5)


def test_default_strategy_on_a_cpu_machine(monkeypatch):
    import tensorflow as tf

    monkeypatch.delenv("TF_CONFIG", raising=False)
    chosen = train.strategy()
    assert chosen is tf.distribute.get_strategy()
    assert train.global_batch_size(32, chosen) == 32


def test_bad_devices_argument():
    with pytest.raises(ValueError, match="Received: devices='gpu'"):
        train.strategy(devices="gpu")


def test_tf_config_with_one_task_is_not_a_cluster(monkeypatch):
    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", json.dumps(_config([_free_port()])))
    assert train.strategy() is tf.distribute.get_strategy()
