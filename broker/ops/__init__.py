"""Operating a site: the config file, the broker configurations, security, systemd units, `fogmesh up`."""
