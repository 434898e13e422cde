"""The edge agent: runs small models with llama.cpp and serves the jobs the coordinator assigns."""
