"""What travels between the coordinator, the bridge, SQS and the cloud worker."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.messages import ErrorInfo, Usage


class _Msg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class CloudRequest(_Msg, frozen=True):
    """Coordinator -> bridge (MQTT ``cloud/requests``) -> SQS request queue -> cloud worker."""

    key: str
    site: str
    device: str
    job: str
    attempt: int
    prompt: str
    max_tokens: int
    priority: int = 5
    model: str | None = None
    deadline_at: float | None = None
    offline_ok: bool = False
    created_at: float = 0.0
    reply_queue: str = ""  # set by the bridge: the site's result queue URL


class CloudResult(_Msg, frozen=True):
    """Cloud worker -> SQS result queue -> bridge -> coordinator (MQTT ``cloud/events``)."""

    key: str
    attempt: int
    kind: Literal["done", "failed", "expired", "accepted"]
    node: str = ""
    text: str = ""
    usage: Usage | None = None
    timings: dict[str, float] | None = None
    error: ErrorInfo | None = None


class ClaimCheck(_Msg, frozen=True):
    """An SQS body that stands for a payload too large for SQS, stored in S3."""

    claim_bucket: str
    claim_key: str
