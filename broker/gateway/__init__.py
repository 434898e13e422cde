"""The OpenAI-compatible front door (``fogmesh gateway``): HTTP requests become jobs of the site."""
