"""fogmesh's error root, and the errors raised by the wire contract.

Every package's errors derive from :class:`FogmeshError`; third-party errors (paho, botocore,
sqlite3, llama.cpp) are converted to one of them where they are caught, so the command line
catches one type."""


class FogmeshError(Exception):
    """Base class of every fogmesh error."""


class SchemaError(FogmeshError):
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
