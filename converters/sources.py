"""Turn what the user points at (a file, a folder, an entry point, an in-memory model) into a source model.

Accepted sources, by what is detected:

- ``*.onnx``: an ONNX file, taken as it is after ``onnx.checker``;
- ``*.pt2``: a PyTorch ExportedProgram (``torch.export.save``);
- ``*.pt``, ``*.pth``, ``*.ts``, ``*.torchscript``, ``*.jit``: a TorchScript archive (needs input specs);
- ``*.keras``: a Keras 3 model file, loaded with ``safe_mode=True``;
- a folder holding ``saved_model.pb``: a TensorFlow SavedModel (its ``serving_default`` signature);
- ``path/to/file.py:function`` or ``package.module:function``: an entry point whose function returns
  ``(model, example_inputs)``, the model being a torch ``nn.Module``, an ExportedProgram, a Keras
  model or a JAX callable with its parameters closed over, and ``example_inputs`` a tuple of arrays.

Entry points run the user's own code: they are as trusted as the user running ``gateway push``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.model import DynamicAxes, InputSpec, SourceModel
from converters.torch_onnx import TORCHSCRIPT_SUFFIXES

__all__ = ["FRAMEWORKS", "detect_framework", "load_source", "resolve_entry_point", "source_from_object"]

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "onnx")
_ENTRY_POINT = re.compile(r"^(?P<target>.+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


def detect_framework(source: str) -> str | None:
    """The framework of a file or folder source from its name and contents; None for an entry point.

    Raises:
        ValueError: the path exists but is of no accepted kind, or it does not exist and is not an
            entry point.
    """
    path = Path(source)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "tensorflow"
        raise ValueError(f"{source} is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return "onnx"
        if suffix == ".pt2" or suffix in TORCHSCRIPT_SUFFIXES:
            return "torch"
        if suffix == ".keras":
            return "keras"
        if suffix == ".py":
            raise ValueError(f"{source} is a Python file: name the function too, as '{source}:function'")
        raise ValueError(
            f"{source}: unsupported file type '{suffix or '(none)'}'; expected .onnx, .pt2, a TorchScript file "
            f"({', '.join(TORCHSCRIPT_SUFFIXES)}), .keras, a SavedModel folder or an entry point 'file.py:function'"
        )
    if _ENTRY_POINT.match(source):
        return None
    raise ValueError(
        f"{source} does not exist and is not an entry point 'file.py:function' or 'package.module:function'"
    )


def resolve_entry_point(source: str) -> Callable[..., Any]:
    """The function an entry point names: ``path/to/file.py:function`` or ``package.module:function``.

    A file is imported with its folder on ``sys.path`` (so it can import its neighbours); a module is
    imported by name. The function is returned, not called.

    Raises:
        ValueError: ``source`` is not an entry point, or its module or function cannot be found.
    """
    match = _ENTRY_POINT.match(source)
    if match is None:
        raise ValueError(f"{source} is not an entry point 'file.py:function' or 'package.module:function'")
    target, function_name = match.group("target"), match.group("function")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise ValueError(f"entry point file {target} does not exist")
        spec = importlib.util.spec_from_file_location(f"_gateway_entry_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import does: dataclasses and pickling look the module up
        sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            raise ValueError(f"cannot import module {target!r} of entry point {source}: {error}") from error
    function: Callable[..., Any] | None = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"{target} has no function {function_name!r}")
    return function


def _call_entry_point(source: str) -> tuple[Any, Sequence[Any]]:
    """Call the entry point's function and check it returned ``(model, example_inputs)``.

    Raises:
        ValueError: the module or function cannot be found, or the result has the wrong form.
    """
    result = resolve_entry_point(source)()
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ValueError(f"{source} must return (model, example_inputs), got {type(result).__name__}")
    model, example_inputs = result
    if not isinstance(example_inputs, tuple | list):
        example_inputs = (example_inputs,)
    return model, example_inputs


def _is_instance(value: Any, module_name: str, class_path: str) -> bool:
    """``isinstance(value, module.class)`` without importing the framework when the value cannot be one."""
    if module_name not in sys.modules:
        return False
    cls: Any = sys.modules[module_name]
    for part in class_path.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            return False
    return isinstance(value, cls)


def source_from_object(
    model: Any,
    example_inputs: Sequence[Any],
    *,
    dynamic_axes: DynamicAxes | None = None,
    framework: str | None = None,
) -> SourceModel:
    """A source for an in-memory model: a torch module or ExportedProgram, a Keras model, or a JAX callable.

    Args:
        model: the model.
        example_inputs: one example array (or tensor) per input, batch first.
        dynamic_axes: extra dynamic axes per input name (dim 0 is always the batch).
        framework: the framework, to check against what ``model`` is (None: detect it).

    Raises:
        ValueError: the model is of no supported kind, or not of ``framework``.
    """
    if _is_instance(model, "torch", "export.ExportedProgram"):
        detected, build = "torch", _torch_program
    elif _is_instance(model, "torch", "jit.ScriptModule"):
        detected, build = "torch", _torch_script
    elif _is_instance(model, "torch", "nn.Module"):
        detected, build = "torch", _torch_module
    elif _is_instance(model, "keras", "Model"):
        detected, build = "keras", _keras_model
    elif callable(model):
        detected, build = "jax", _jax_function
    else:
        raise ValueError(
            f"cannot convert a {type(model).__name__}: expected a torch nn.Module or ExportedProgram, a Keras "
            "model, or a JAX callable"
        )
    if framework is not None and framework != detected and {framework, detected} != {"keras", "tensorflow"}:
        raise ValueError(f"--framework {framework} given, but the model is a {detected} model ({type(model).__name__})")
    return build(model, example_inputs, dynamic_axes)


def _torch_module(model: Any, examples: Sequence[Any], dynamic_axes: DynamicAxes | None) -> SourceModel:
    from converters.torch_onnx import TorchModuleSource

    return TorchModuleSource(model, examples, dynamic_axes)


def _torch_program(model: Any, examples: Sequence[Any], dynamic_axes: DynamicAxes | None) -> SourceModel:
    from converters.torch_onnx import ExportedProgramSource

    return ExportedProgramSource(model, dynamic_axes)


def _torch_script(model: Any, examples: Sequence[Any], dynamic_axes: DynamicAxes | None) -> SourceModel:
    from converters.torch_onnx import TorchScriptSource

    return TorchScriptSource.from_examples(model, examples, dynamic_axes)


def _keras_model(model: Any, examples: Sequence[Any], dynamic_axes: DynamicAxes | None) -> SourceModel:
    from converters.keras_onnx import KerasSource

    return KerasSource(model, [np.asarray(value) for value in examples], dynamic_axes)


def _jax_function(model: Any, examples: Sequence[Any], dynamic_axes: DynamicAxes | None) -> SourceModel:
    from converters.jax_onnx import JaxSource

    return JaxSource(model, [np.asarray(value) for value in examples], dynamic_axes)


def load_source(
    source: str,
    *,
    framework: str | None = None,
    input_specs: list[InputSpec] | None = None,
    example_inputs: dict[str, np.ndarray] | None = None,
    dynamic_axes: DynamicAxes | None = None,
) -> SourceModel:
    """Load the model that ``source`` names (see the module docstring for what is accepted).

    Args:
        source: a file, a SavedModel folder or an entry point.
        framework: one of :data:`FRAMEWORKS`, to check (or, for entry points, to confirm) the detection.
        input_specs: input specs for sources that carry no shapes (TorchScript).
        example_inputs: arrays for ``input_specs``.
        dynamic_axes: extra dynamic axes per input name.

    Raises:
        ValueError: unsupported, missing or unsafe source, or a framework other than ``framework``.
        ConversionError: the model cannot be described (e.g. it returns no tensors).
    """
    if framework is not None and framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
    detected = detect_framework(source)
    if detected is None:
        model, examples = _call_entry_point(source)
        return source_from_object(model, examples, dynamic_axes=dynamic_axes, framework=framework)
    if framework is not None and framework != detected and {framework, detected} != {"keras", "tensorflow"}:
        raise ValueError(f"--framework {framework} given, but {source} is a {detected} model")
    path = Path(source)
    if detected == "onnx":
        from converters.onnx_file import OnnxFileSource

        return OnnxFileSource(path)
    if detected == "torch":
        from converters.torch_onnx import load_torch_file

        return load_torch_file(path, input_specs=input_specs, example_inputs=example_inputs, dynamic_axes=dynamic_axes)
    if detected == "keras":
        from converters.keras_onnx import load_keras_file

        return load_keras_file(path, dynamic_axes=dynamic_axes)
    from converters.saved_model_onnx import load_saved_model

    return load_saved_model(path, dynamic_axes=dynamic_axes)
