"""How every command-line tool ends on a user error or Ctrl-C: the one place that turns them into exit codes.

A :class:`~cambench.errors.CambenchError` is one line on stderr (``error: ...``, or the log's error line
in the Hydra app) and exit status 2; Ctrl-C is one line and status 130 (the evaluation has already logged
which rows are kept and how to go on). Neither prints a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec

from cambench.errors import CambenchError

USER_ERROR, INTERRUPTED = 2, 130
P = ParamSpec("P")
log = logging.getLogger("cambench")


def guarded(main: Callable[P, int | None]) -> Callable[P, int]:
    """``main`` returning its exit status, 2 on a user error and 130 on Ctrl-C, each with one line on stderr."""

    @functools.wraps(main)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except CambenchError as err:
            print(f"error: {err}", file=sys.stderr)
            return USER_ERROR
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C)", file=sys.stderr)
            return INTERRUPTED

    return wrapped
