"""Errors raised by the wire contract."""


class SchemaError(Exception):
    """Base class of every error raised by ``schemas``."""


class DecodeError(SchemaError):
    """A payload that is not a valid message; carries the raw bytes and a reason code."""

    def __init__(self, code: str, message: str, raw: bytes = b"", field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.raw = raw
        self.field = field

    def __repr__(self) -> str:
        return f"DecodeError(code={self.code!r}, field={self.field!r}, message={self.message!r})"


class TopicError(SchemaError):
    """A topic that does not belong to fogmesh's topic tree, or an id that cannot be a topic level."""
