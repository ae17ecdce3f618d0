"""torchrun, ending as its workers did: a failed worker's exit status and its own one-line message, not torchrun's
traceback and error box (ChildFailedError). Signalled itself, torchrun stops its workers and waits for them; it then
ends as they did too: 143 when they checkpointed and stopped, 0 when the signal came too late to stop them and they
finished (so a finished run is not requeued). It waits EUROSAT_STOP_TIMEOUT seconds (default 90; torchrun's own is
30) before it kills them: the rendered Slurm job is signalled 120 s before its time limit, and a stop at an epoch's
end waits for that epoch's validation. `make train GPUS=N` and the rendered Slurm and Kubernetes jobs launch
torchrun projects with it:

    python -m eurosat.torchrun --standalone --nproc_per_node=2 projects/<name>/train.py train ...

Everything else (flags, logs, rendezvous, signals) is torch.distributed.run's own.
"""

from __future__ import annotations

import os
import sys

from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from eurosat.cli import exit_without_a_final_collection
from eurosat.errors import UserError

STOP_TIMEOUT_ENV = "EUROSAT_STOP_TIMEOUT"


def process_status(returncode: int) -> int:
    """A Popen return code as a shell status: killed by signal N (-N) is 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def status_after_signal(worker_codes: list[int | None], signum: int) -> int:
    """torchrun's status once it was signalled and stopped its workers: the first failed worker's, 0 when every one
    finished, 128 + the signal when it does not know them all (one still ran when torchrun gave up waiting)."""
    if not worker_codes or None in worker_codes:
        return 128 + signum
    failed = [code for code in worker_codes if code]
    return process_status(failed[0]) if failed else 0


def stop_timeout(environ) -> float:
    """EUROSAT_STOP_TIMEOUT: the seconds workers get to stop after a signal."""
    text = environ.get(STOP_TIMEOUT_ENV, "90")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise UserError(f"{STOP_TIMEOUT_ENV}={text}: give the seconds training may take to stop after a signal, e.g. 90")
    return seconds


def wait_and_record(codes: list, timeout: float) -> None:
    """Has the agent's shutdown after a signal wait up to `timeout` s for the workers (its close's timeout), and
    every shutdown leave their return codes in `codes`."""
    shutdown = LocalElasticAgent._shutdown

    def shutdown_and_record(agent, *args, **kwargs):
        context = agent._pcontext
        if context is not None and (args or "death_sig" in kwargs):  # torchrun was signalled (it passes the signal)
            close = context.close

            def close_in_our_time(death_sig=None, *_torchs_timeout, **_as_keyword):
                close(death_sig, timeout)

            context.close = close_in_our_time
        shutdown(agent, *args, **kwargs)
        handlers = getattr(agent._pcontext, "subprocess_handlers", None) or {}
        codes[:] = [handler.proc.returncode for handler in handlers.values()]

    LocalElasticAgent._shutdown = shutdown_and_record


def main(argv=None) -> None:
    exit_without_a_final_collection()
    args = parse_args(argv)
    worker_codes: list[int | None] = []
    try:
        wait_and_record(worker_codes, stop_timeout(os.environ))
        run(args)
    except UserError as bad:
        bad.report()
        sys.exit(bad.exit_status)
    except ChildFailedError as failed:  # the worker that failed first printed why; the others were stopped after it
        _, first = failed.get_first_failure()
        sys.exit(process_status(first.exitcode))
    except SignalException as stopped:  # torchrun itself was signalled (Slurm signals every process of a step)
        sys.exit(status_after_signal(worker_codes, stopped.sigval))


if __name__ == "__main__":
    main()
