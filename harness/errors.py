"""Errors a user can cause; the entry points print them as one line and exit non-zero."""


class UserError(Exception):
    """A bad config value, a missing file or malformed data. The message names the key or file."""

    exit_code = 2
