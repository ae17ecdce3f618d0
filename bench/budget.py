"""make bench's time budget: rows measured one after another while it lasts, each printed as it finishes.

A row that would not fit what is left (by the estimate it is given) is skipped; at the deadline the row in progress
is stopped (SIGALRM), and so is everything after Ctrl-C or SIGTERM. What was measured before stays, so that the
results can still be written.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable


class OutOfTime(Exception):
    pass


class Interrupted(Exception):
    pass


class Budget:
    """with Budget(seconds) as budget: budget.run(...) for each row. Inside the block SIGALRM marks the deadline and
    SIGINT/SIGTERM stop the rows; a stop between two rows ends the block quietly, like one within a row."""

    def __init__(self, seconds: float, log=sys.stderr):
        self.seconds, self.log = seconds, log
        self.start = time.perf_counter()
        self.rows: list[dict] = []  # name and seconds of every row measured, in order
        self.skipped: list[str] = []
        self.stopped: str | None = None  # why the rows stopped before the end, if they did
        self.deferring, self.pending = False, None  # a stop that came while a finished row was being recorded

    def _signal(self, signum, frame):
        stop = OutOfTime if signum == signal.SIGALRM else Interrupted
        if self.deferring:
            self.pending = stop
            return
        raise stop

    @contextlib.contextmanager
    def _deferred(self):
        """A row's figures, its record and its line go together: a stop meanwhile waits until they are kept."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            raise self.pending

    def __enter__(self):
        self.handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM)}
        for signum in self.handlers:
            signal.signal(signum, self._signal)
        self.start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler)
        if isinstance(error, (OutOfTime, Interrupted)):
            self._stop(error)
            return True
        return False

    def _stop(self, error: Exception) -> None:
        self.stopped = self.stopped or ("out of time" if isinstance(error, OutOfTime) else "interrupted")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def run(
        self,
        name: str,
        measure: Callable[[], dict],
        keep: Callable[[dict], None],
        estimate: float = 0.0,
        summary: Callable[[dict], str] = str,
    ) -> None:
        """Measures a row and hands its figures to keep(), unless it is skipped or stopped."""
        if self.stopped or self.remaining() < estimate:
            reason = self.stopped or f"needs about {estimate:.0f} s, {max(self.remaining(), 0):.0f} s left"
            print(f"[{self.elapsed():6.1f} s] skipped: {name} ({reason})", file=self.log, flush=True)
            self.skipped.append(name)
            return
        started = time.perf_counter()
        try:
            figures = measure()
        except (OutOfTime, Interrupted) as stop:
            self._stop(stop)
            print(f"[{self.elapsed():6.1f} s] stopped: {name} ({self.stopped})", file=self.log, flush=True)
            self.skipped.append(name)
            return
        seconds = time.perf_counter() - started
        with self._deferred():
            keep(figures)
            self.rows.append({"name": name, "seconds": round(seconds, 3)})
            print(f"[{self.elapsed():6.1f} s] {name}: {summary(figures)} ({seconds:.1f} s)", file=self.log, flush=True)

    def summary(self) -> dict:
        return {
            "seconds": self.seconds,
            "used_seconds": round(self.elapsed(), 3),
            "rows": self.rows,
            "skipped": self.skipped,
            "stopped": self.stopped,
        }
