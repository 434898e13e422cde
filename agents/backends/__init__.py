"""Inference backends behind one protocol: llama.cpp, an OpenAI-compatible API, a synthetic one."""
