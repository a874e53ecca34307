"""Errors a user can act on."""

from __future__ import annotations


class StudyError(ValueError):
    """A study is invalid. ``key`` is the full key path of the offending value (``grid.N[2]``)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)
