"""The gateway side of fogmesh: the MQTT session every daemon shares, the coordinator, its ledger and scheduler, the site broker."""

__version__ = "0.1.0"
