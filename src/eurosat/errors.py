class UserError(Exception):
    """Bad input from the user: reported as one line and exit status 2, never a traceback."""
