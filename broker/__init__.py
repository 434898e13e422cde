"""The gateway side of fogmesh: the shared MQTT session, the coordinator, its ledger and scheduler, the broker."""

__version__ = "0.1.0"
