"""Fault tolerance: a pruning run killed mid-epoch resumes from its BackupAndRestore backup.

One worker process (MirroredStrategy on two logical CPU devices) prunes a
digits CNN for 4 epochs with PolynomialDecay + UpdatePruningStep and
`keras.callbacks.BackupAndRestore` (a backup at each epoch end). The first run
kills itself with `os._exit(1)` in the middle of the third epoch; the same
command run again resumes at the start of that epoch from the backup and must
end exactly where an uninterrupted run ends: same step counters, same masks,
same weights, the target sparsity.
"""

import json
import os
import subprocess
import sys

import pytest

JOB = os.path.join(os.path.dirname(__file__), "_fault_tolerance_job.py")


def _run(workdir, limit=240):
    proc = subprocess.Popen(
        [sys.executable, JOB, str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=limit)
    finally:
        if proc.poll() is None:  # timed out: never leave a training process behind
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_killed_pruning_run_resumes_with_schedule_and_step_counter_intact(tmp_path):
    command_rc, err = _run(tmp_path)
    assert command_rc == 1, f"the first run should have been killed mid-epoch:\n{err[-3000:]}"
    assert (tmp_path / "killed").exists()
    metadata = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2  # the backup of the last finished epoch
    assert not (tmp_path / "result.json").exists()

    command_rc, err = _run(tmp_path)  # the same command again
    assert command_rc == 0, err[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    resumed, reference = result["resumed"], result["uninterrupted"]
    assert result["replicas"] == 2
    assert resumed["epochs_run"] == 2 and reference["epochs_run"] == 4  # resumed at epoch 2
    # Every pruned layer counted the steps of all 4 epochs, as without the kill.
    assert resumed["steps"] == reference["steps"] == [result["total_steps"]] * 4
    assert resumed["optimizer_iterations"] == result["total_steps"]
    assert resumed["sparsity"] == pytest.approx(result["target"], abs=0.005)
    assert resumed["sparsity"] == reference["sparsity"]
    assert result["masks_equal"]
    assert result["weight_diff"] < 1e-5
    assert resumed["loss"] == pytest.approx(reference["loss"][2:], rel=1e-5)
    assert not result["backup_left"]  # BackupAndRestore deletes it after a finished run
