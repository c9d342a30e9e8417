"""One error type for everything the user can fix. Torch-free (the runtime uses it too).

Every command catches `UserError`, prints its message as one line and exits non-zero. Messages say
what went wrong, why, and what to do.
"""


class UserError(Exception):
    """Bad input: an argument, a file or a bundle the user can fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
