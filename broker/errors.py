"""Errors raised on the gateway side and by the shared MQTT session."""


class FogmeshError(Exception):
    """Base class of fogmesh's operational errors."""


class ConfigError(FogmeshError):
    """A configuration file or variable that cannot be used; the message names the key."""


class BrokerUnavailable(FogmeshError):
    """The MQTT broker could not be reached or refused the connection."""


class LedgerError(FogmeshError):
    """The job ledger could not be read or written."""


class SiteError(FogmeshError):
    """A site (broker, coordinator, agents) could not be started."""
