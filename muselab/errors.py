"""Errors in what a user asked for: a bad path, key, checkpoint or combination of configs.

The command-line tools print them as one line naming the file or config key, with no traceback
(`report_user_errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class UserError(ValueError):
    """Something the user can fix: the message names the file or config key and what to do."""


@contextmanager
def report_user_errors(program: str) -> Iterator[None]:
    """Turn a `UserError` into ``<program>: error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except UserError as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def user_errors(program: str) -> Callable:
    """Decorator form of `report_user_errors` for a command-line ``main``."""

    def wrap(fn: Callable) -> Callable:
        def main(*args, **kwargs):
            with report_user_errors(program):
                return fn(*args, **kwargs)

        main.__name__, main.__doc__, main.__wrapped__ = fn.__name__, fn.__doc__, fn
        return main

    return wrap
