"""Errors of the cloud path."""

from schemas.errors import FogmeshError


class CloudError(FogmeshError):
    """Base class of the cloud path's errors."""


class CloudUnreachable(CloudError):
    """The queue service could not be reached (network, endpoint down, throttled)."""


class BadCloudMessage(CloudError):
    """An SQS message that is not a fogmesh request or result; it is left for the dead-letter queue."""
