"""python -m eurosat.torchrun, what `make train GPUS=N` starts torchrun projects with: a failed worker ends the
launch with that worker's exit status and its own output, without torchrun's traceback and error box."""

import sys
import time

import pytest
from helpers import run

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
