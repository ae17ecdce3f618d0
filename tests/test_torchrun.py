"""python -m eurosat.torchrun, what `make train GPUS=N` starts torchrun projects with: a failed worker ends the
launch with that worker's exit status and its own output, without torchrun's traceback and error box; a signal to
torchrun ends it as its workers end."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, run

from eurosat.torchrun import STOP_TIMEOUT_ENV, stop_timeout

# Rank 1 fails at once (exit status or signal from argv); rank 0 would run for a minute if nobody stopped it
WORKER = """
import os, signal, sys, time
if os.environ["RANK"] == "1":
    print("error: rank 1 failed", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL) if sys.argv[1] == "kill" else sys.exit(int(sys.argv[1]))
time.sleep(60)
"""


@pytest.mark.parametrize(("how", "status"), [("3", 3), ("kill", 128 + 9)])
def test_a_failed_worker_ends_the_launch_with_its_own_status_and_no_traceback(how, status, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    start = time.monotonic()
    launch = [sys.executable, "-m", "eurosat.torchrun", "--standalone", "--nproc_per_node=2"]
    result = run(*launch, tmp_path / "worker.py", how, check=False, timeout=120)
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert result.stderr.count("error: rank 1 failed") == 1
    assert time.monotonic() - start < 50  # rank 0 was stopped, not waited for


# Each rank says it is ready, then on SIGTERM stops at once (143, as train.py does after its checkpoint), stops after
# 5 s (a checkpoint at an epoch's end, after its validation), or, as when the signal lands after train.py's last stop
# vote, goes on and finishes
SIGNALLED_WORKER = """
import os, signal, sys, time
from pathlib import Path
def stop(*_):
    if sys.argv[1] == "finish":
        return
    time.sleep(5 if sys.argv[1] == "slow" else 0)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
Path(sys.argv[2], os.environ["RANK"]).touch()
time.sleep(4)
"""


def signal_torchrun(tmp_path, outcome: str, env=None) -> tuple[int, str]:
    """SIGTERM to torchrun alone once both ranks run: its exit status and stderr."""
    (tmp_path / "worker.py").write_text(SIGNALLED_WORKER)
    ready = tmp_path / "ready"
    ready.mkdir()
    launch = [sys.executable, "-m", "eurosat.torchrun", "--standalone", "--nproc_per_node=2"]
    command = [*launch, tmp_path / "worker.py", outcome, ready]
    with subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, env=env) as torchrun:
        deadline = time.monotonic() + 60
        while len(list(ready.iterdir())) < 2:
            assert torchrun.poll() is None and time.monotonic() < deadline, torchrun.stderr.read()[-3000:]
            time.sleep(0.2)
        torchrun.send_signal(signal.SIGTERM)
        stderr = torchrun.communicate(timeout=60)[1]
    return torchrun.returncode, stderr


@pytest.mark.parametrize(("outcome", "status"), [("stop", 143), ("finish", 0)])
def test_a_signal_to_torchrun_ends_the_launch_as_its_workers_end(outcome, status, tmp_path):
    """SIGTERM to torchrun alone, as docker stop and Kubernetes send it (Slurm signals the workers too): torchrun
    passes it on, waits, and exits 143 when the workers stopped, 0 when they finished, so a batch script that
    requeues on 143 does not requeue a finished run."""
    returncode, stderr = signal_torchrun(tmp_path, outcome)
    assert returncode == status, stderr[-3000:]
    assert "Received 15 death signal" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(("timeout", "status"), [("1", 128 + 9), ("20", 143)])
def test_after_a_signal_torchrun_waits_eurosat_stop_timeout_for_its_workers(timeout, status, tmp_path):
    """Workers that need 5 s to stop are killed (137, no requeue) when EUROSAT_STOP_TIMEOUT gives them 1 s, and
    stop (143) when it gives them 20."""
    start = time.monotonic()
    returncode, stderr = signal_torchrun(tmp_path, "slow", env={**os.environ, STOP_TIMEOUT_ENV: timeout})
    assert returncode == status, stderr[-3000:]
    assert ("forcefully exiting via 9" in stderr) == (status == 128 + 9)
    assert time.monotonic() - start < 50


def test_the_stop_timeout_is_90_s_unless_set_and_a_bad_one_is_one_line(tmp_path):
    assert stop_timeout({}) == 90 and stop_timeout({STOP_TIMEOUT_ENV: "2.5"}) == 2.5
    (tmp_path / "worker.py").write_text("raise SystemExit('a worker started')")
    for bad in ("0", "inf", "soon"):
        launch = [sys.executable, "-m", "eurosat.torchrun", "--standalone", "--nproc_per_node=1", tmp_path / "worker.py"]
        result = run(*launch, check=False, env={**os.environ, STOP_TIMEOUT_ENV: bad})
        assert result.returncode == 2 and "a worker started" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"error: {STOP_TIMEOUT_ENV}={bad}: give the seconds training may take to stop after a signal, e.g. 90"
        ]
