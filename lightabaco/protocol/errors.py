"""Errors raised by the core services. The HTTP layer turns them into Abaco envelopes."""

from __future__ import annotations


class AbacoError(Exception):
    """An error with Abaco's message text and HTTP status code (Abaco's default is 400)."""

    code = 400

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(AbacoError):
    code = 404


class PermissionDenied(AbacoError):
    """Abaco answers permission failures with 400, not 401/403 (spec §1.3)."""

    code = 400


class AuthenticationError(AbacoError):
    """Missing or bad credentials. Abaco uses 400 for a missing JWT; we use 401 for a bad token."""

    code = 401


class ValidationError(AbacoError):
    code = 400


class Timeout(AbacoError):
    code = 504
