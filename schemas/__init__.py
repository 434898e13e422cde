"""The wire contract of fogmesh: topics, message types, encoding and validation. No I/O."""

from schemas.codec import decode, encode
from schemas.errors import DecodeError, SchemaError

__all__ = ["DecodeError", "SchemaError", "decode", "encode"]
