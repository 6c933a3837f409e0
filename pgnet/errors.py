"""The base class of errors a user can fix (a bad file, folder, option or value).

Every command line catches :class:`UserError` and prints its one-line message instead of a
traceback; library code raises a subclass naming the file, key or value at fault.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input (file, folder, option, value); the message says which and why."""


class UnknownNameError(UserError, KeyError):
    """A name or key that is not known (a dataset, a config key): a :class:`UserError` that ``except
    KeyError`` still catches, printed as its plain message (without the quotes ``KeyError`` adds)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
