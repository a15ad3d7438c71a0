"""MultiWorkerMirroredStrategy for real: two worker processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

JOB = os.path.join(os.path.dirname(__file__), "_multiworker_job.py")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(index, ports, out, timeout=60):
    env = dict(
        os.environ,
        TF_CONFIG=json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": index},
            }
        ),
    )
    return subprocess.Popen(
        [sys.executable, JOB, str(out), str(timeout)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs, limit=240):
    try:
        outputs = [p.communicate(timeout=limit) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outputs


def test_two_workers_train_in_lockstep(tmp_path):
    ports = _free_ports(2)
    procs = [_start(i, ports, tmp_path / f"w{i}.json") for i in range(2)]
    outputs = _finish(procs)
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [json.load(open(tmp_path / f"w{i}.json")) for i in range(2)]
    assert all(r["multi_worker"] for r in results)
    assert all(r["replicas"] == 2 for r in results)
    for a, b in zip(results[0]["weights"], results[1]["weights"]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert results[0]["loss"][-1] < results[0]["loss"][0]


def test_a_dead_worker_gives_a_clear_error_not_a_hang(tmp_path):
    ports = _free_ports(2)
    proc = _start(0, ports, tmp_path / "w0.json", timeout=3)
    ((_, err),) = _finish([proc], limit=120)
    assert proc.returncode != 0
    assert f"worker:1 at 127.0.0.1:{ports[1]}" in err
    assert "did not answer within 3 s" in err
