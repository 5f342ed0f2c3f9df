"""Errors meant for the user: each renders as one line naming what went wrong and where.

The CLI catches `MetarecError`, prints its message and exits non-zero; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MetarecError(Exception):
    """A problem with the user's input, configuration or environment."""


class DataError(MetarecError):
    """Bad input data, located by file, and where known by line and field.

    Renders as ``path:line: field 'name': message``.
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        location = self.path if line is None else f"{self.path}:{line}"
        detail = message if field is None else f"field '{field}': {message}"
        super().__init__(f"{location}: {detail}")


class ConfigError(MetarecError):
    """A configuration value or key that is missing, unknown or of the wrong type."""
