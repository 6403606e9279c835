"""The one error type a route raises for a request it refuses."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses; becomes ``{"error": message[, "index": i]}``."""

    def __init__(self, status: int, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.index = index
