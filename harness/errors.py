"""Errors a user can cause, and the one way every entry point prints them: one line, exit code 2."""

from __future__ import annotations

import sys
from typing import NoReturn


class UserError(Exception):
    """A bad config value, a missing file or malformed data. The message names the key or file."""

    exit_code = 2


def first_line(e: BaseException) -> str:
    """The first non-empty line of an error's message, or its type name when it has none."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def one_line(e: BaseException) -> str:
    """`Type: first line`: an error as it appears in a summary or an MLflow tag."""
    text = first_line(e)
    return type(e).__name__ if text == type(e).__name__ else f"{type(e).__name__}: {text}"


def exit_user_error(prog: str, e: UserError) -> NoReturn:
    """What a CLI does with a UserError: `<prog>: error: <message>` on stderr, then its exit code."""
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
