import sys


class UserError(Exception):
    """Bad input from the user: reported as one line and exit status 2, never a traceback."""

    exit_status = 2
    reported = False

    def report(self) -> None:
        """Its one line on stderr, once (a lost peer may be reported before it is raised)."""
        if not self.reported:
            self.reported = True
            print(f"error: {self}", file=sys.stderr, flush=True)


class LostPeer(UserError):
    """Another training process (a node, a rank) is gone: one line, and exit status 75 (EX_TEMPFAIL), which says
    that the same command may succeed later; the rendered Slurm script requeues the job on it."""

    exit_status = 75
