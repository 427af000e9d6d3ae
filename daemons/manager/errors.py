"""The one error type of the manager's service layer: an HTTP status, a machine-readable
kind, a message for the operator and, for a bad value, the field it is in.

The REST API answers it as JSON ``{"error", "message", "field"}``; the console shows the
message next to the field of its form. Both get the same words from the same place.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.field = status, error, message, field
