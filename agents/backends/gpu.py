"""GPU offload: which device llama.cpp offloads layers to, and how many layers a model gets.

A model's ``gpu_layers`` (``agent.gpu_layers``, ``--gpu-layers``) is a layer count, -1 for all;
left out, it is all layers when llama-cpp-python was built with a GPU backend (CUDA, Metal,
Vulkan) and none otherwise, so a GPU build uses its GPU without being told.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from functools import cache
from typing import Any

log = logging.getLogger("fogmesh.gpu")
_GPU_TYPES = {1, 2}  # ggml_backend_dev_type: 0 CPU, 1 GPU, 2 integrated GPU in newer ggml (3 accelerator)


@cache
def gpu_devices() -> tuple[str, ...]:
    """The GPUs llama.cpp sees, as ``"CUDA0 (NVIDIA H100 80GB HBM3)"``; empty on a CPU-only build."""
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return ()
    try:  # ggml's device registry is not in llama-cpp-python's bindings: ask libggml itself
        # where llama-cpp-python loaded libllama from ($LLAMA_CPP_LIB_PATH, else its package's lib/)
        lib_dir = getattr(llama_cpp.llama_cpp, "_base_path", None)
        lib_dir = lib_dir or os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        ggml = ctypes.CDLL(os.path.join(lib_dir, "libggml.so"))
        dev = ctypes.c_void_p
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype, ggml.ggml_backend_dev_get.argtypes = dev, [ctypes.c_size_t]
        for fn in (ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description):
            fn.restype, fn.argtypes = ctypes.c_char_p, [dev]
        ggml.ggml_backend_dev_type.restype, ggml.ggml_backend_dev_type.argtypes = ctypes.c_int, [dev]
        found = []
        for i in range(ggml.ggml_backend_dev_count()):
            d = ggml.ggml_backend_dev_get(i)
            if ggml.ggml_backend_dev_type(d) in _GPU_TYPES:
                name, what = ggml.ggml_backend_dev_name(d).decode(), ggml.ggml_backend_dev_description(d).decode()
                found.append(f"{name} ({what})")
        return tuple(found) or ("GPU",)
    except (OSError, AttributeError) as exc:  # another layout (macOS dylibs, a system llama.cpp): unnamed
        log.debug("cannot list ggml devices: %s", exc)
        return ("GPU",)


def load_llama_cpp() -> None:
    """Load llama.cpp's shared libraries (and its GPU backend) before anything loads numpy's.

    On an H200 machine (CUDA 13, numpy 2.5 from pip with its bundled OpenBLAS), a process that had
    imported numpy before llama-cpp-python died of SIGSEGV inside ``llama_model_load_from_file`` when
    it offloaded layers, every time; with llama.cpp loaded first it ran (docs/benchmarks.md, 1d).
    Each command that loads a model calls this before its other imports, and
    :mod:`agents.backends.sampling`, the one module of fogmesh that imports numpy, before numpy."""
    if "llama_cpp" not in sys.modules and "numpy" in sys.modules:
        log.warning("numpy was imported before llama.cpp: a CUDA build offloading layers has crashed so "
                    "(SIGSEGV in llama_model_load_from_file); import llama_cpp first")
    import llama_cpp  # noqa: F401


def offload_layers(requested: int | None) -> int:
    """``n_gpu_layers`` for llama.cpp: the requested count (-1: all), or by default all layers on
    a GPU build and none on a CPU-only one. A CPU-only build offloads nothing whatever is asked."""
    if not gpu_devices():
        if requested:
            log.warning("gpu_layers=%s asked, but llama-cpp-python was built without a GPU backend: the model "
                        "runs on the CPU (docs/deploy.md: installing it with CUDA, Metal or Vulkan)", requested)
        return 0
    return -1 if requested is None else requested


def offloaded(model: Any, n_gpu_layers: int) -> tuple[int, int, str]:
    """(layers on the GPU, the model's layers, the device) for a loaded model, counted as llama.cpp
    counts them: each repeating layer and the output layer."""
    import llama_cpp

    total = int(llama_cpp.llama_model_n_layer(model)) + 1
    layers = total if n_gpu_layers < 0 else min(n_gpu_layers, total)
    devices = gpu_devices()
    return layers, total, (devices[0] if layers and devices else "CPU")
