"""The gateway's one error: an HTTP answer in OpenAI's error shape."""

from __future__ import annotations

from typing import Any

from schemas.errors import FogmeshError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error", 499: "cancelled", 504: "timeout"}


class ApiError(FogmeshError):
    """A request answered with an HTTP error: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class ClientGone(FogmeshError):
    """The HTTP client closed its connection before the answer came."""


class Diverged(FogmeshError):
    """A job restarted on another agent answers differently from the text already streamed to the client."""
