"""python -m eurosat.torchrun, what `make train GPUS=N` starts torchrun projects with: a failed worker ends the
launch with that worker's exit status and its own output, without torchrun's traceback and error box; a signal to
torchrun ends it as its workers end."""

import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, run

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


# Each rank says it is ready, then on SIGTERM stops at once (143, as train.py does after its checkpoint) or, as when
# the signal lands after train.py's last stop vote, goes on and finishes
SIGNALLED_WORKER = """
import os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143) if sys.argv[1] == "stop" else None)
Path(sys.argv[2], os.environ["RANK"]).touch()
time.sleep(4)
"""


@pytest.mark.parametrize(("outcome", "status"), [("stop", 143), ("finish", 0)])
def test_a_signal_to_torchrun_ends_the_launch_as_its_workers_end(outcome, status, tmp_path):
    """SIGTERM to torchrun alone, as docker stop and Kubernetes send it (Slurm signals the workers too): torchrun
    passes it on, waits, and exits 143 when the workers stopped, 0 when they finished, so a batch script that
    requeues on 143 does not requeue a finished run."""
    (tmp_path / "worker.py").write_text(SIGNALLED_WORKER)
    ready = tmp_path / "ready"
    ready.mkdir()
    launch = [sys.executable, "-m", "eurosat.torchrun", "--standalone", "--nproc_per_node=2"]
    command = [*launch, tmp_path / "worker.py", outcome, ready]
    with subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True) as torchrun:
        deadline = time.monotonic() + 60
        while len(list(ready.iterdir())) < 2:
            assert torchrun.poll() is None and time.monotonic() < deadline, torchrun.stderr.read()[-3000:]
            time.sleep(0.2)
        torchrun.send_signal(signal.SIGTERM)
        stderr = torchrun.communicate(timeout=60)[1]
    assert torchrun.returncode == status, stderr[-3000:]
    assert "Received 15 death signal" in stderr and "Traceback" not in stderr
