"""Capacity planning: a simulation of a site that runs the real scheduler, and `fogmesh plan`."""
