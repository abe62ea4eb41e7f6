"""Backends: a model artifact in, a loaded model that runs numpy tensors out.

Framework imports stay inside the module that needs them, so a server that serves only ONNX never
imports TensorFlow or PyTorch. :func:`create_backend` is the one place that maps a backend name to
its implementation.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from backends.base import Backend, InferenceInputError, ModelLoadError, TensorSpec

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "InferenceInputError",
    "ModelLoadError",
    "TensorSpec",
    "create_backend",
    "detect_backend",
]

#: Backend names accepted in config.yaml, with the artifact each one serves.
BACKEND_NAMES: dict[str, str] = {"onnxruntime": "model.onnx"}


def detect_backend(version_path: Path) -> str:
    """The backend for a version folder, from the artifact it holds (``model.onnx`` -> onnxruntime).

    Raises:
        ModelLoadError: the folder holds no known artifact.
    """
    found = [name for name, artifact in BACKEND_NAMES.items() if (version_path / artifact).exists()]
    if len(found) == 1:
        return found[0]
    if not found:
        expected = ", ".join(BACKEND_NAMES.values())
        raise ModelLoadError(f"no model artifact in {version_path.name}/ (expected one of: {expected})")
    raise ModelLoadError(f"{version_path.name}/ holds artifacts of several backends ({', '.join(found)})")


def create_backend(name: str, version_path: Path, options: BaseModel) -> Backend:
    """Load one instance of backend ``name`` from a version folder.

    Args:
        name: a key of :data:`BACKEND_NAMES`.
        version_path: the version folder holding the artifact.
        options: the backend's options model from the model config (e.g. ``OnnxRuntimeOptions``).

    Raises:
        ModelLoadError: unknown backend, or the artifact cannot be loaded.
    """
    if name == "onnxruntime":
        from backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeOptions

        return OnnxRuntimeBackend(version_path, OnnxRuntimeOptions.model_validate(options))
    raise ModelLoadError(f"unknown backend '{name}' (known: {', '.join(BACKEND_NAMES)})")
