"""Errors raised by the edge agent."""

from schemas.errors import FogmeshError


class AgentError(FogmeshError):
    """Base class of the agent's errors."""


class BackendError(AgentError):
    """The inference backend failed; ``code`` says how, for the device's final message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ModelNotFound(AgentError):
    """The configured model file does not exist and could not be assembled."""
