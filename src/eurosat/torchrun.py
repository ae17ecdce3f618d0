"""torchrun, ending as its failed worker did: that worker's exit status and its own one-line message, not
torchrun's traceback and error box (ChildFailedError); signalled itself, with 128 + the signal, like its workers.
`make train GPUS=N` and the rendered Slurm and Kubernetes jobs launch torchrun projects with it:

    python -m eurosat.torchrun --standalone --nproc_per_node=2 projects/<name>/train.py train ...

Everything else (flags, logs, rendezvous, signals) is torch.distributed.run's own.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as failed:  # the worker that failed first printed why; the others were stopped after it
        _, first = failed.get_first_failure()
        sys.exit(first.exitcode if first.exitcode > 0 else 128 - first.exitcode)  # killed by signal N: 128 + N
    except SignalException as stopped:  # torchrun itself was signalled (Slurm signals every process of a step):
        sys.exit(128 + stopped.sigval)  # it stopped the workers, which checkpoint as they stop; say so as they do


if __name__ == "__main__":
    main()
