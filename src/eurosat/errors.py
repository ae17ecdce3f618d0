class UserError(Exception):
    """Bad input from the user: reported as one line and exit status 2, never a traceback."""

    exit_status = 2


class LostPeer(UserError):
    """Another training process (a node, a rank) is gone: one line, and exit status 75 (EX_TEMPFAIL), which says
    that the same command may succeed later; the rendered Slurm script requeues the job on it."""

    exit_status = 75
