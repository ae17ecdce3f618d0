"""Where a run's time goes: seconds from the start of the process to each milestone of the run.

One-time costs (decoding the data, building the model, the first steps' autotuning and compilation) can outweigh
a short run's training; the milestones show them apart from the epochs. A resumed run's timeline is its own
process's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch  # (not imported here: bench/startup.py times torch's import from process start with this module)

MILESTONES = {"data_ready": "data ready", "model_built": "model built", "first_step": "first step", "first_epoch": "first epoch"}


def _seconds_since_process_start() -> float:
    """From the kernel's record of this process (Linux); elsewhere 0, that is, from the import of this module."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time in ticks
    except (OSError, ValueError, IndexError):
        return 0.0


_STARTED = time.monotonic() - _seconds_since_process_start()


def since_start() -> float:
    return time.monotonic() - _STARTED


class Timeline:
    """Each milestone once per process, and the end of every epoch, in seconds since the process started; the
    device is synchronised first, so that queued GPU work is counted where it ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.epoch_ends: list[float] = []

    def mark(self, milestone: str, device: torch.device | None = None) -> None:
        if milestone in self.seconds:
            return
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)
        self.seconds[milestone] = round(since_start(), 3)

    def epoch_end(self) -> float:
        """(The device was synchronised by the epoch's metrics.)"""
        now = round(since_start(), 3)
        self.seconds.setdefault("first_epoch", now)
        self.epoch_ends.append(now)
        return now

    def summary(self) -> dict:
        """What metrics.json records: `<milestone>_s`, `epoch_end_s` and `finished_s`, seconds from process start."""
        named = {f"{name}_s": self.seconds[name] for name in MILESTONES if name in self.seconds}
        return {**named, "epoch_end_s": self.epoch_ends, "finished_s": round(since_start(), 3)}

    @staticmethod
    def line(summary: dict) -> str:
        """The run's last lines say it, e.g. `time from process start (s): data ready 2.1, model built 2.9, ...`."""
        parts = [f"{label} {summary[f'{name}_s']:.1f}" for name, label in MILESTONES.items() if f"{name}_s" in summary]
        epochs = " ".join(f"{seconds:.1f}" for seconds in summary["epoch_end_s"])
        tail = f"epochs end {epochs or '-'}, finished {summary['finished_s']:.1f}"
        return f"time from process start (s): {', '.join([*parts, tail])}"
