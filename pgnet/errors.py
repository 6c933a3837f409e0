"""The base class of errors a user can fix (a bad file, folder, option or value).

Every command line catches :class:`UserError` and prints its one-line message instead of a
traceback; library code raises a subclass naming the file, key or value at fault. Messages that
name a list (keys, files, names) shorten it with :func:`format_list`.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """A problem with the user's input (file, folder, option, value); the message says which and why."""


class UnknownNameError(UserError, KeyError):
    """A name or key that is not known (a dataset, a config key): a :class:`UserError` that ``except
    KeyError`` still catches, printed as its plain message (without the quotes ``KeyError`` adds)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def format_list(items: Iterable[object], limit: int = 10, separator: str = ", ") -> str:
    """``items`` for a message, the first ``limit`` of them: ``"a, b, c, ... (7 more)"``.

    Every message that names a list of keys, files or names shortens it here, so all of them read
    the same; ``separator`` joins the items (``"; "`` for items that hold commas).
    """
    items = [str(item) for item in items]
    shown = separator.join(items[:limit])
    return f"{shown}{separator}... ({len(items) - limit} more)" if len(items) > limit else shown
