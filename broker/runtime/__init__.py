"""The daemon kernel every fogmesh process shares: the MQTT session, logs, metrics, sd_notify,
settings, errors, child processes, and the device-side client. It knows no daemon."""

__version__ = "0.1.0"
