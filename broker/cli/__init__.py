"""The command line (`fogmesh ...`) and the views it serves: the console, the web dashboard."""
