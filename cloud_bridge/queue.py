"""The cloud queue: SQS through boto3, with S3 claim checks for payloads over the size limit.

Endpoint, region and credentials come from boto3's standard chain; an optional
endpoint URL points the same code at any SQS-compatible server (moto, LocalStack).
botocore's errors are converted here, at the boundary.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import boto3
import botocore.exceptions
import orjson
from botocore.config import Config

from cloud_bridge.errors import CloudError, CloudUnreachable

log = logging.getLogger("fogmesh.cloud")
SQS_MAX_BYTES = 262_144  # 256 KiB, the classic SQS limit (AWS now allows 1 MiB; the lower bound is safe everywhere)
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
)


@dataclass(frozen=True)
class Received:
    body: bytes
    receipt: str
    message_id: str
    receive_count: int
    attributes: dict[str, str]


@dataclass(frozen=True)
class Outgoing:
    id: str  # unique within a batch
    body: bytes
    attributes: dict[str, str]
    group: str = ""  # FIFO: message group (one per device)
    dedup: str = ""  # FIFO: deduplication id


class CloudQueue(Protocol):
    """What the bridge and the worker need of a cloud queue; :class:`SqsQueue` is the real one."""

    def ensure(self, name: str, dlq_name: str | None = None, max_receives: int = 3,
               visibility_s: int = 60, fifo: bool = False) -> str: ...
    def url(self, name: str) -> str: ...
    def ensure_bucket(self) -> None: ...
    def wrap(self, body: bytes, key: str) -> bytes: ...
    def unwrap(self, body: bytes) -> bytes: ...
    def send(self, url: str, items: list[Outgoing]) -> list[str]: ...
    def receive(self, url: str, max_messages: int, wait_s: int, visibility_s: int | None = None) -> list[Received]: ...
    def delete(self, url: str, receipt: str) -> None: ...
    def extend(self, url: str, receipt: str, visibility_s: int) -> None: ...
    def depth(self, url: str) -> int: ...


def _convert(exc: Exception, what: str) -> CloudError:
    if isinstance(exc, _UNREACHABLE):
        return CloudUnreachable(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ThrottlingException", "RequestThrottled", "ServiceUnavailable", "InternalError"):
            return CloudUnreachable(f"{what}: {code}")
        return CloudError(f"{what}: {code}: {exc}")
    return CloudError(f"{what}: {exc}")


class SqsQueue:
    """SQS (and S3 for claim checks) through boto3."""

    def __init__(self, endpoint_url: str | None = None, region: str | None = None, bucket: str = "",
                 max_message_bytes: int = SQS_MAX_BYTES, timeout_s: float = 5.0) -> None:
        cfg = Config(connect_timeout=timeout_s, read_timeout=max(timeout_s, 25.0),
                     retries={"max_attempts": 2, "mode": "standard"})
        session = boto3.session.Session(region_name=region)
        kw: dict[str, Any] = {"config": cfg}
        if endpoint_url:
            kw["endpoint_url"] = endpoint_url
        self.sqs = session.client("sqs", **kw)
        self.s3 = session.client("s3", **kw)
        self.bucket = bucket
        self.max_message_bytes = max_message_bytes

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        try:
            return fn(**kw)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _convert(exc, what) from exc

    # ------------------------------------------------------------------ queues

    def ensure(self, name: str, dlq_name: str | None = None, max_receives: int = 3,
               visibility_s: int = 60, fifo: bool = False) -> str:
        """Create the queue (and its dead-letter queue with a redrive policy) if missing; return its URL.

        An existing queue is used as it is: its attributes are the operator's.
        """
        suffix = ".fifo" if fifo else ""
        try:
            return str(self.sqs.get_queue_url(QueueName=name + suffix)["QueueUrl"])
        except botocore.exceptions.ClientError as exc:
            if "NonExistentQueue" not in str(exc) and "QueueDoesNotExist" not in str(exc):
                raise _convert(exc, "find queue") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _convert(exc, "find queue") from exc
        attrs: dict[str, str] = {"VisibilityTimeout": str(visibility_s)}
        if fifo:
            attrs["FifoQueue"] = "true"
        if dlq_name:
            dlq_attrs = {"FifoQueue": "true"} if fifo else {}
            dlq_url = self._call("create dead-letter queue", self.sqs.create_queue,
                                 QueueName=dlq_name + suffix, Attributes=dlq_attrs)["QueueUrl"]
            arn = self._call("read dead-letter queue", self.sqs.get_queue_attributes, QueueUrl=dlq_url,
                             AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            attrs["RedrivePolicy"] = orjson.dumps({"deadLetterTargetArn": arn,
                                                   "maxReceiveCount": str(max_receives)}).decode()
        return str(self._call("create queue", self.sqs.create_queue, QueueName=name + suffix,
                              Attributes=attrs)["QueueUrl"])

    def url(self, name: str) -> str:
        return str(self._call("find queue", self.sqs.get_queue_url, QueueName=name)["QueueUrl"])

    def send(self, url: str, items: list[Outgoing]) -> list[str]:
        """SendMessageBatch (10 at a time); returns the ids that were accepted."""
        accepted: list[str] = []
        fifo = url.endswith(".fifo")
        for start in range(0, len(items), 10):
            entries = []
            for it in items[start:start + 10]:
                entry: dict[str, Any] = {
                    "Id": it.id, "MessageBody": it.body.decode(),
                    "MessageAttributes": {k: {"DataType": "String", "StringValue": v}
                                          for k, v in it.attributes.items() if v},
                }
                if fifo:
                    entry["MessageGroupId"] = it.group or "default"
                    entry["MessageDeduplicationId"] = it.dedup or hashlib.sha256(it.body).hexdigest()[:64]
                entries.append(entry)
            out = self._call("send to queue", self.sqs.send_message_batch, QueueUrl=url, Entries=entries)
            accepted += [ok["Id"] for ok in out.get("Successful", [])]
            for bad in out.get("Failed", []):
                log.warning("event=sqs_send_failed id=%s code=%s", bad.get("Id"), bad.get("Code"))
        return accepted

    def receive(self, url: str, max_messages: int = 10, wait_s: int = 20,
                visibility_s: int | None = None) -> list[Received]:
        kw: dict[str, Any] = {"QueueUrl": url, "MaxNumberOfMessages": max_messages, "WaitTimeSeconds": wait_s,
                              "MessageAttributeNames": ["All"], "AttributeNames": ["ApproximateReceiveCount"]}
        if visibility_s is not None:
            kw["VisibilityTimeout"] = visibility_s
        out = self._call("receive from queue", self.sqs.receive_message, **kw)
        return [Received(body=m["Body"].encode(), receipt=m["ReceiptHandle"], message_id=m["MessageId"],
                         receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                         attributes={k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()})
                for m in out.get("Messages", [])]

    def delete(self, url: str, receipt: str) -> None:
        self._call("delete from queue", self.sqs.delete_message, QueueUrl=url, ReceiptHandle=receipt)

    def extend(self, url: str, receipt: str, visibility_s: int) -> None:
        self._call("extend visibility", self.sqs.change_message_visibility, QueueUrl=url,
                   ReceiptHandle=receipt, VisibilityTimeout=visibility_s)

    def depth(self, url: str) -> int:
        out = self._call("read queue depth", self.sqs.get_queue_attributes, QueueUrl=url,
                         AttributeNames=["ApproximateNumberOfMessages"])
        return int(out["Attributes"].get("ApproximateNumberOfMessages", 0))

    # ------------------------------------------------------------------ claim checks

    def ensure_bucket(self) -> None:
        if not self.bucket:
            return
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError:
            self._call("create bucket", self.s3.create_bucket, Bucket=self.bucket)
        except botocore.exceptions.BotoCoreError as exc:
            raise _convert(exc, "find bucket") from exc

    def wrap(self, body: bytes, key: str) -> bytes:
        """``body`` itself if it fits in an SQS message, else a claim check pointing at an S3 object."""
        if len(body) <= self.max_message_bytes:
            return body
        if not self.bucket:
            raise CloudError(f"payload of {len(body)} bytes is over the SQS limit and no claim-check bucket is set")
        self._call("store claim check", self.s3.put_object, Bucket=self.bucket, Key=key, Body=body)
        return orjson.dumps({"claim_bucket": self.bucket, "claim_key": key})

    def unwrap(self, body: bytes) -> bytes:
        """The payload a message stands for, fetching it from S3 when the body is a claim check."""
        if body.startswith(b'{"claim_bucket"'):
            ref = orjson.loads(body)
            obj = self._call("fetch claim check", self.s3.get_object, Bucket=ref["claim_bucket"], Key=ref["claim_key"])
            return bytes(obj["Body"].read())
        return body
