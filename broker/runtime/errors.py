"""Errors raised by the daemon kernel and the gateway side."""

from schemas.errors import FogmeshError


class ConfigError(FogmeshError):
    """A configuration file or variable that cannot be used; the message names the key."""


class BrokerUnavailable(FogmeshError):
    """The MQTT broker could not be reached or refused the connection."""


class PublishRefused(FogmeshError):
    """The broker refused a publish: this user's ACL does not allow the topic."""


class LedgerError(FogmeshError):
    """The job ledger could not be read or written."""


class SiteError(FogmeshError):
    """A site (broker, coordinator, agents) could not be started."""
