"""The one base class of the errors a user can fix.

Every error that bad input or a bad configuration raises (an unknown method, a wrong parameter, a
missing file, a model that cannot be split at a layer, ...) derives from :class:`CambenchError`,
and its message is one line that says what is wrong and names the fix. The command-line tools
print that line and exit with status 2 (:func:`cambench.cli.errors.user_errors`); from Python,
catch ``cambench.CambenchError``. Anything else that escapes is a bug.
"""

from __future__ import annotations


class CambenchError(ValueError):
    """A user error; its message is one line naming the fix (see the module docstring)."""
