"""Backends: a model artifact in, a loaded model that runs numpy tensors out.

Framework imports stay inside the module that needs them, so a server that serves only ONNX never
imports TensorFlow or PyTorch. :func:`create_backend` is the one place that maps a backend name to
its implementation, and :data:`BACKEND_ARTIFACTS` the one place that maps it to the artifacts it serves.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from backends.base import (
    Backend,
    DeclaredSignature,
    InferenceInputError,
    ModelLoadError,
    TensorSpec,
    default_output_names,
)

__all__ = [
    "BACKEND_ARTIFACTS",
    "BACKEND_RUNTIMES",
    "Backend",
    "DeclaredSignature",
    "InferenceInputError",
    "ModelLoadError",
    "TensorSpec",
    "create_backend",
    "default_output_names",
    "detect_backend",
]

#: Backend names accepted in config.yaml, with the artifacts each one serves from a version folder
#: (``model.savedmodel`` is a SavedModel folder, and ``saved_model.pb`` a version folder that is itself a
#: SavedModel, TF Serving's layout; the torch backend prefers an ExportedProgram ``model.pt2`` and also
#: serves TorchScript, ``model.pt``).
BACKEND_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("model.onnx",),
    "torch": ("model.pt2", "model.pt"),
    "tensorflow": ("model.savedmodel", "saved_model.pb"),
}

#: The runtime each backend runs the model with, as people call it (for messages).
BACKEND_RUNTIMES: dict[str, str] = {"onnxruntime": "ONNX Runtime", "torch": "PyTorch", "tensorflow": "TensorFlow"}


def detect_backend(version_path: Path) -> str:
    """The backend for a version folder, from the one artifact it holds (``model.pt2`` -> torch).

    Raises:
        ModelLoadError: the folder holds no known artifact, or several (e.g. ``model.onnx`` beside
            ``model.pt2``: which one to serve would be a guess).
    """
    found = [
        (name, artifact)
        for name, artifacts in BACKEND_ARTIFACTS.items()
        for artifact in artifacts
        if (version_path / artifact).exists()
    ]
    if len(found) == 1:
        return found[0][0]
    if not found:
        expected = ", ".join(artifact for artifacts in BACKEND_ARTIFACTS.values() for artifact in artifacts)
        raise ModelLoadError(f"no model artifact in {version_path.name}/ (expected one of: {expected})")
    listed = ", ".join(f"{artifact} ({name})" for name, artifact in found)
    raise ModelLoadError(f"{version_path.name}/ holds several model artifacts: {listed}; keep exactly one")


def create_backend(
    name: str,
    version_path: Path,
    options: BaseModel | None = None,
    declared: DeclaredSignature | None = None,
    cpu_threads: int = 0,
    artifact: str | None = None,
) -> Backend:
    """Load one instance of backend ``name`` from a version folder.

    Args:
        name: a key of :data:`BACKEND_ARTIFACTS`.
        version_path: the version folder holding the artifact.
        options: the backend's options model from the model config (e.g. ``OnnxRuntimeOptions``);
            None: the backend's defaults.
        declared: the inputs and outputs the config declares (used by artifacts without a signature).
        cpu_threads: CPU threads this instance may use, the default of the backend's thread options
            (the repository divides the process's cores among a version's instances); 0: the
            runtime's own default.
        artifact: the artifact's file (or SavedModel folder) name in the version folder, when it
            is not the backend's default (Triton's ``default_model_filename``); for the torch
            backend a name ending in ``.pt2`` is an ExportedProgram, any other TorchScript.

    Raises:
        ModelLoadError: unknown backend, its framework is not installed (the message says what to
            install), or the artifact cannot be loaded.
    """
    if name == "onnxruntime":
        from backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeOptions

        return OnnxRuntimeBackend(version_path, OnnxRuntimeOptions.model_validate(options or {}), cpu_threads, artifact)
    if name == "torch":
        from backends.pytorch import TorchBackend, TorchOptions

        return TorchBackend(
            version_path, TorchOptions.model_validate(options or {}), declared or DeclaredSignature(), artifact
        )
    if name == "tensorflow":
        from backends.tensorflow_savedmodel import TensorFlowBackend, TensorFlowOptions

        return TensorFlowBackend(version_path, TensorFlowOptions.model_validate(options or {}), artifact)
    raise ModelLoadError(f"unknown backend '{name}' (known: {', '.join(BACKEND_ARTIFACTS)})")
