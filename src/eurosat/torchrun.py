"""torchrun, ending as its workers did: a failed worker's exit status and its own one-line message, not torchrun's
traceback and error box (ChildFailedError). Signalled itself, torchrun stops its workers and waits for them; it then
ends as they did too: 143 when they checkpointed and stopped, 0 when the signal came too late to stop them and they
finished (so a finished run is not requeued). `make train GPUS=N` and the rendered Slurm and Kubernetes jobs launch
torchrun projects with it:

    python -m eurosat.torchrun --standalone --nproc_per_node=2 projects/<name>/train.py train ...

Everything else (flags, logs, rendezvous, signals) is torch.distributed.run's own.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


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


def record_worker_codes(codes: list) -> None:
    """Has the agent's shutdown (stop the workers, wait up to its timeout) leave their return codes in `codes`."""
    shutdown = LocalElasticAgent._shutdown

    def shutdown_and_record(agent, *args, **kwargs):
        shutdown(agent, *args, **kwargs)
        handlers = getattr(agent._pcontext, "subprocess_handlers", None) or {}
        codes[:] = [handler.proc.returncode for handler in handlers.values()]

    LocalElasticAgent._shutdown = shutdown_and_record


def main(argv=None) -> None:
    args = parse_args(argv)
    worker_codes: list[int | None] = []
    record_worker_codes(worker_codes)
    try:
        run(args)
    except ChildFailedError as failed:  # the worker that failed first printed why; the others were stopped after it
        _, first = failed.get_first_failure()
        sys.exit(process_status(first.exitcode))
    except SignalException as stopped:  # torchrun itself was signalled (Slurm signals every process of a step)
        sys.exit(status_after_signal(worker_codes, stopped.sigval))


if __name__ == "__main__":
    main()
