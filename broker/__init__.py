"""The gateway side of fogmesh, in parts: ``runtime`` (the daemon kernel every process shares),
``coordinator``, ``planning``, ``ops`` (running a site) and ``cli``. docs/architecture.md draws them."""
