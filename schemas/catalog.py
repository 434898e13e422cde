"""Every message type of the contract by the name of its JSON Schema file (``schemas/json/<name>.schema.json``)."""

from __future__ import annotations

from typing import Any

from schemas.messages import DEVICE_MESSAGES, INTERNAL_MESSAGES
from schemas.status import STATUS_MESSAGES

ALL_MESSAGES: dict[str, type[Any]] = {**DEVICE_MESSAGES, **STATUS_MESSAGES, **INTERNAL_MESSAGES}
