"""Backend registry: the ``backend`` parameter picks one by name, never by file suffix."""

from __future__ import annotations

import importlib

from .base import BackendError, BackendInfo, InferenceBackend, ModelSpec

# name -> "module:Class"; modules are imported only when chosen, so a missing runtime only matters
# for the backend that needs it.
REGISTRY = {
    "torch": "mobile_vla_node.backends.torch_backend:TorchBackend",
    "onnx": "mobile_vla_node.backends.onnx_backend:OnnxBackend",
    "tensorrt": "mobile_vla_node.backends.tensorrt_backend:TensorRTBackend",
    # Remote: the two graphs served by a Triton Inference Server over gRPC (docs/TRITON.md).
    "triton": "mobile_vla_node.backends.triton_backend:TritonBackend",
    # Zero-cost stand-in for measuring node overhead (vla_bench --mode node); never for driving.
    "null": "mobile_vla_node.backends.null_backend:NullBackend",
}


def backend_class(name: str) -> type[InferenceBackend]:
    """Return the backend class for ``name``; unknown names list the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known backends: {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_backend(config) -> InferenceBackend:
    """Instantiate (not load) the backend that ``config.backend`` names."""
    return backend_class(config.backend)(config)


def require(module: str, install: str):
    """Import a runtime module or raise `BackendError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(f"Python package {module!r} is not importable ({exc}); "
                           f"install it with: {install}") from exc


__all__ = ["REGISTRY", "BackendError", "BackendInfo", "InferenceBackend", "ModelSpec",
           "backend_class", "create_backend", "require"]
