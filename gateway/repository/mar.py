"""TorchServe model archives (``.mar``): read, checked, and served as a normal version folder.

An archive made by ``torch-model-archiver`` is a zip holding ``MAR-INF/MANIFEST.json`` (the model's
name and version, its serialized file, its handler, and its model file, requirements file and
config file when it has them), the serialized model file, and the extra files at its top level. The
gateway serves an archive whose serialized file is TorchScript (``torch.jit.save``), an ONNX model
(``.onnx``) or a ``torch.export`` program (``.pt2``, ``torch.export.save``), and whose handler is
one of TorchServe's default handlers (:data:`DEFAULT_HANDLERS`) or none. The serialized file is
extracted, under the artifact name its backend expects (``model.pt``, ``model.onnx``,
``model.pt2``), into a temporary folder, and loaded from there by the torch or ONNX Runtime
backend as any version folder is (:func:`served_version`); the folder is removed once the backend
holds the model. What a default handler does around the model (decoding and normalizing images,
tokenizing text, top-k labels) is not reproduced: clients send the tensors the model takes and get
the tensors it returns.

Nothing from an archive ever runs: no handler, model file, extra file or requirements file is
imported, executed or installed. An archive that needs code of its own (a custom handler, or an
eager model: ``modelFile``, the model's Python class, with a state_dict) is refused with the reason
and what to do instead (:class:`ArchiveError`). Every member is checked by the rules of a model
package's members (:func:`gateway.repository.packages.check_zip_members`: no absolute path, no
``..``, no link or special file) before anything is read, and only the manifest, the serialized
file and ``config.yaml`` are ever read.

Where an archive lives: alone in a version folder, ``<repository>/<model>/<version>/<archive>.mar``,
dropped there (poll mode picks it up as any changed version) or written by ``gateway push
archive.mar``. The model folder's ``config.yaml`` applies as for any version. TorchScript records
no signature: its inputs and outputs come from the model folder's ``config.yaml`` or, when that
lists none, from a ``config.yaml`` among the archive's extra files, in the same schema but with
``inputs``, ``outputs`` and ``max_batch_size`` only (:meth:`TorchServeArchive.served_config`).

This module imports only the standard library and the light parts of :mod:`backends` at module
level, so that ``gateway push`` can read an archive's name before its quick checks; the repository
modules it uses are imported where they are used.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from backends import BACKEND_ARTIFACTS
from backends.base import ModelLoadError
from backends.pytorch import EXPORTED_PROGRAM, TORCHSCRIPT
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.repository.config import ModelConfig

__all__ = [
    "ARCHIVE_CONFIG",
    "ARCHIVE_SUFFIX",
    "DEFAULT_HANDLERS",
    "MANIFEST",
    "ArchiveError",
    "ServedVersion",
    "TorchServeArchive",
    "archive_model_name",
    "read_archive",
    "served_version",
]

#: A TorchServe model archive's file name ends with this.
ARCHIVE_SUFFIX = ".mar"
#: The manifest ``torch-model-archiver`` writes into every archive.
MANIFEST = "MAR-INF/MANIFEST.json"
#: The extra file that gives a TorchScript model's inputs and outputs (the schema of the model's config.yaml).
ARCHIVE_CONFIG = "config.yaml"
#: TorchServe's default handlers (``ts.torch_handler``) whose model the gateway serves; their
#: pre- and post-processing is not reproduced.
DEFAULT_HANDLERS = frozenset(
    {"base_handler", "image_classifier", "image_segmenter", "object_detector", "text_classifier"}
)
#: The default handlers of TorchServe's C++ backend (runtime ``LSP``), which run a TorchScript model.
DEFAULT_CPP_HANDLERS = frozenset({"BaseHandler", "TorchScriptHandler"})
#: The config.yaml fields an archive may give (the rest belong to the model folder's config.yaml).
_ARCHIVE_CONFIG_FIELDS = frozenset({"inputs", "outputs", "max_batch_size"})
#: TorchServe's default handlers that run the model through an engine of their own, and that engine.
_ENGINE_HANDLERS = {
    "dali_image_classifier": "NVIDIA DALI's preprocessing pipeline",
    "vllm_handler": "vLLM",
    "trt_llm_handler": "TensorRT-LLM",
}
_ONNX_ARTIFACT = BACKEND_ARTIFACTS["onnxruntime"][0]


class ArchiveError(ModelLoadError):
    """A TorchServe archive the gateway does not serve: unsafe, damaged, or needing code of its own.

    The message names the archive, says why, and what to do instead.
    """


@dataclass(frozen=True)
class _ModelFile:
    """What an archive's serialized file is, and how the gateway serves it."""

    description: str
    backend: str
    artifact: str


_ONNX = _ModelFile("an ONNX model", "onnxruntime", _ONNX_ARTIFACT)
_PROGRAM = _ModelFile("a torch.export program", "torch", EXPORTED_PROGRAM)
_TORCHSCRIPT = _ModelFile("TorchScript", "torch", TORCHSCRIPT)


@dataclass(frozen=True)
class TorchServeArchive:
    """A TorchServe archive that passed every check of :func:`read_archive`.

    Attributes:
        path: the ``.mar`` file.
        model_name: the manifest's ``modelName`` (TorchServe's archive name).
        model_version: the manifest's ``modelVersion`` (TorchServe's, e.g. ``1.0``), or ``""``.
        serialized_file: the member holding the model.
        handler: the default handler named by the manifest, or ``""`` for none.
        runtime: the manifest's ``runtime`` (``python``, ``python3`` or ``LSP``).
        has_config: whether the archive holds a ``config.yaml`` at its top level.
    """

    path: Path
    model_name: str
    model_version: str
    serialized_file: str
    handler: str
    runtime: str
    has_config: bool
    _model_file: _ModelFile = field(repr=False)

    @property
    def backend(self) -> str:
        """The gateway backend serving the model: ``torch`` or ``onnxruntime``."""
        return self._model_file.backend

    @property
    def artifact(self) -> str:
        """The artifact name the model file is served under: ``model.pt``, ``model.pt2`` or ``model.onnx``."""
        return self._model_file.artifact

    @property
    def is_torchscript(self) -> bool:
        """Whether the model is TorchScript, which records no inputs or outputs of its own."""
        return self._model_file is _TORCHSCRIPT

    def describe(self) -> str:
        """E.g. ``noop.mar (TorchScript ts.pt, handler base_handler)``."""
        return (
            f"{self.path.name} ({self._model_file.description} {self.serialized_file}, "
            f"handler {self.handler or '(none)'})"
        )

    def metadata(self) -> dict[str, Any]:
        """What a served version's metadata shows of the archive, under ``parameters.torchserve``."""
        return {
            "torchserve": {
                "archive": self.path.name,
                "model_name": self.model_name,
                "model_version": self.model_version,
                "serialized_file": self.serialized_file,
                "handler": self.handler,
                "runtime": self.runtime,
            }
        }

    def extract_model(self, folder: Path) -> Path:
        """Write the serialized file into ``folder`` (created if missing) as :attr:`artifact`.

        Returns:
            The written file.

        Raises:
            ArchiveError: the member cannot be read (a damaged archive), or a TorchScript candidate
                (any suffix but ``.onnx`` and ``.pt2``) is not TorchScript (e.g. a pickled module).
        """
        from converters.torch_onnx import is_torchscript_file

        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.artifact
        try:
            with (
                zipfile.ZipFile(self.path) as archive,
                archive.open(self.serialized_file) as source,
                target.open("wb") as destination,
            ):
                shutil.copyfileobj(source, destination, 1 << 20)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ArchiveError(f"{self.path.name}: {self.serialized_file} cannot be read: {error}") from None
        if self.is_torchscript and not is_torchscript_file(target):
            raise ArchiveError(
                f"{self.path.name}: {self.serialized_file} is not TorchScript (torch.jit.save), .onnx or .pt2: a "
                "pickled module or state_dict needs the model's Python class, and the gateway runs no code from an "
                f"archive. {_EXPORT_ADVICE}"
            )
        return target

    def served_config(self, config: ModelConfig) -> ModelConfig:
        """The model's config for this archive: the model folder's, with the archive's signature when it lists none.

        When the model folder's config.yaml lists no inputs and no outputs and the archive holds a
        ``config.yaml``, that file's ``inputs``, ``outputs`` and (unless the model's config sets it)
        ``max_batch_size`` are taken: TorchScript needs them, and for an ONNX model or a program
        they are checked against the model as any config.yaml is.

        Raises:
            ArchiveError: the archive's config.yaml sets other fields, or a TorchScript model has
                inputs and outputs in neither config.yaml (the message says what to do).
            ModelConfigError: the archive's config.yaml is not valid (the message names the field).
        """
        from gateway.repository.config import ModelConfigError, read_model_config

        if config.inputs or config.outputs or not self.has_config:
            if self.is_torchscript and not (config.inputs and config.outputs):
                raise ArchiveError(
                    f"{self.describe()} holds TorchScript, which records no input or output shapes, and neither a "
                    f"{ARCHIVE_CONFIG} among its extra files nor the model folder's {ARCHIVE_CONFIG} lists its "
                    f"inputs and outputs: add one to the archive (torch-model-archiver --extra-files "
                    f"{ARCHIVE_CONFIG}), write the model folder's {ARCHIVE_CONFIG}, or push the archive with "
                    "--input-spec (converted to ONNX)"
                )
            return config
        with tempfile.TemporaryDirectory(prefix="gateway-mar-") as work:
            try:
                with zipfile.ZipFile(self.path) as archive:
                    archive.extract(ARCHIVE_CONFIG, work)
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise ArchiveError(f"{self.path.name}: {ARCHIVE_CONFIG} cannot be read: {error}") from None
            try:
                archive_config = read_model_config(Path(work))
            except ModelConfigError as error:
                raise ModelConfigError(f"{self.path.name}: {error}") from None
        others = sorted(archive_config.model_fields_set - _ARCHIVE_CONFIG_FIELDS)
        if others:
            raise ArchiveError(
                f"{self.path.name}: its {ARCHIVE_CONFIG} sets {', '.join(others)}; an archive's {ARCHIVE_CONFIG} "
                f"gives the model's {', '.join(sorted(_ARCHIVE_CONFIG_FIELDS))} only: put the rest into the model "
                f"folder's {ARCHIVE_CONFIG}"
            )
        update: dict[str, Any] = {"inputs": archive_config.inputs, "outputs": archive_config.outputs}
        if config.max_batch_size is None:
            update["max_batch_size"] = archive_config.max_batch_size
        served = config.model_copy(update=update)
        if self.is_torchscript and not (served.inputs and served.outputs):
            raise ArchiveError(
                f"{self.describe()} holds TorchScript, which records no input or output shapes: its "
                f"{ARCHIVE_CONFIG} must list both its inputs (named as forward's arguments) and its outputs"
            )
        return served


#: What to do with a model that needs code to load.
_EXPORT_ADVICE = (
    "Export the model with torch.export (torch.export.save(program, 'model.pt2')) or TorchScript "
    "(torch.jit.save), archive that file (torch-model-archiver --serialized-file model.pt2 --handler "
    "base_handler ...), or push the .pt2 directly: gateway push model.pt2"
)


def _open_checked(path: Path) -> zipfile.ZipFile:
    """Open an archive and check every member's path and kind.

    Raises:
        ArchiveError: not a zip file, or a member a model package could not hold (named).
    """
    from gateway.repository.packages import check_zip_members

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ArchiveError(f"{path.name} is not a TorchServe model archive (a zip file): {error}") from None
    try:
        check_zip_members(archive)
    except GatewayError as error:
        archive.close()
        raise ArchiveError(f"{path.name}: {error.message}") from None
    return archive


def _manifest_model(archive: zipfile.ZipFile, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and its ``model`` object.

    Raises:
        ArchiveError: no manifest, or one that is not a JSON object with a ``model`` object.
    """
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except KeyError:
        raise ArchiveError(
            f"{name} holds no {MANIFEST}: it is not a TorchServe model archive (made by torch-model-archiver)"
        ) from None
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise ArchiveError(f"{name}: {MANIFEST} is not valid JSON: {error}") from None
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise ArchiveError(f"{name}: {MANIFEST} has no 'model' object")
    return manifest, model


def _text(model: dict[str, Any], key: str, name: str) -> str:
    value = model.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ArchiveError(f"{name}: {MANIFEST} model.{key} is not a string")
    return value.strip()


def archive_model_name(path: Path) -> str:
    """The model name an archive was made with (``modelName`` in its manifest), read without other checks.

    Raises:
        ArchiveError: not a zip file, no manifest, or no model name in it.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            _, model = _manifest_model(archive, path.name)
    except (zipfile.BadZipFile, OSError) as error:
        raise ArchiveError(f"{path.name} is not a TorchServe model archive (a zip file): {error}") from None
    model_name = _text(model, "modelName", path.name)
    if not model_name:
        raise ArchiveError(f"{path.name}: {MANIFEST} names no modelName")
    return model_name


def read_archive(path: Path) -> TorchServeArchive:
    """Read and check a TorchServe archive: its members, its manifest, its handler and its model file.

    Only the central directory and the manifest are read; nothing is extracted or run.

    Args:
        path: the ``.mar`` file.

    Raises:
        ArchiveError: the archive is not a safe zip (a member with an absolute path, ``..``, a link),
            has no valid manifest, needs code of its own (a custom handler, a ``modelFile``), names
            no serialized file or one it does not hold, or one of another kind than TorchScript,
            ONNX or ``.pt2``. The message says why and what to do instead.
    """
    name = path.name
    with _open_checked(path) as archive:
        manifest, model = _manifest_model(archive, name)
        members = set(archive.namelist())
    runtime = manifest.get("runtime", "python")
    if not isinstance(runtime, str):
        raise ArchiveError(f"{name}: {MANIFEST} runtime is not a string")
    model_file = _text(model, "modelFile", name)
    serialized = _text(model, "serializedFile", name)
    handler = _text(model, "handler", name)
    if model_file:
        raise ArchiveError(
            f"{name} holds an eager model: modelFile {model_file} (the model's Python class) with the weights "
            f"{serialized or '(none)'}, which only the archive's own code can load, and the gateway runs no code "
            f"from an archive. {_EXPORT_ADVICE}"
        )
    default_handlers = DEFAULT_CPP_HANDLERS if runtime == "LSP" else DEFAULT_HANDLERS
    if runtime not in ("python", "python3", "LSP"):
        raise ArchiveError(f"{name}: runtime '{runtime}' is not one of TorchServe's (python, python3, LSP)")
    if handler in _ENGINE_HANDLERS:
        raise ArchiveError(
            f"{name}: its handler '{handler}' runs the model through {_ENGINE_HANDLERS[handler]}, which the "
            f"gateway does not run; it serves archives with the default handlers "
            f"{', '.join(sorted(default_handlers))} or none"
        )
    if handler and handler not in default_handlers:
        raise ArchiveError(
            f"{name} needs its own handler code: handler '{handler}' is not one of TorchServe's default handlers "
            f"({', '.join(sorted(default_handlers))}), and the gateway runs no code from an archive. Serve the "
            "model without it: what the handler does before and after the model (decoding, preprocessing, "
            "postprocessing) moves into the client, or into the model before it is exported; archive it again "
            "with --handler base_handler, or push the model file itself (gateway push model.pt2, model.onnx or "
            "a TorchScript file)"
        )
    if not serialized:
        raise ArchiveError(
            f"{name} names no serializedFile: its handler would make or download the model in code, which the "
            f"gateway does not run. {_EXPORT_ADVICE}"
        )
    if serialized not in members:
        raise ArchiveError(f"{name}: its manifest names serializedFile {serialized}, which the archive does not hold")
    suffix = PurePosixPath(serialized).suffix.lower()
    kind = {".onnx": _ONNX, ".pt2": _PROGRAM}.get(suffix, _TORCHSCRIPT)
    return TorchServeArchive(
        path=path,
        model_name=_text(model, "modelName", name),
        model_version=_text(model, "modelVersion", name),
        serialized_file=serialized,
        handler=handler,
        runtime=runtime,
        has_config=ARCHIVE_CONFIG in members,
        _model_file=kind,
    )


@dataclass(frozen=True)
class ServedVersion:
    """A version folder as a backend loads it.

    Attributes:
        path: the folder holding the artifact: the version folder itself, or for an archive a
            temporary folder holding its extracted model file.
        config: the model's config for this version (for an archive, with its signature, see
            :meth:`TorchServeArchive.served_config`).
        parameters: what the version's metadata shows beside the backend's own parameters (the
            archive, under ``torchserve``); empty for a version without an archive.
    """

    path: Path
    config: ModelConfig
    parameters: dict[str, Any]


@contextlib.contextmanager
def served_version(version_dir: Path, config: ModelConfig) -> Iterator[ServedVersion]:
    """The folder to load a version from: the version folder itself, or its TorchServe archive imported.

    A version folder holding a ``.mar`` is served from it: the archive is checked
    (:func:`read_archive`), its model file extracted into a temporary folder under its artifact name
    (an ONNX model then passes :func:`gateway.repository.packages.check_version_files`, as an
    uploaded one does), and the config completed with its signature. The temporary folder is removed
    when the block ends: load the backends inside it.

    Raises:
        ArchiveError: several archives, an archive beside another artifact (which one to serve would
            be a guess), or an archive refused by :func:`read_archive` or its extraction.
        ModelConfigError: the archive's config.yaml is not valid.
    """
    from gateway.repository.packages import check_version_files

    archives = sorted(entry for entry in version_dir.glob(f"*{ARCHIVE_SUFFIX}") if entry.is_file())
    if not archives:
        yield ServedVersion(version_dir, config, {})
        return
    if len(archives) > 1:
        listed = ", ".join(entry.name for entry in archives)
        raise ArchiveError(f"{version_dir.name}/ holds several TorchServe archives ({listed}); keep exactly one")
    beside = [name for names in BACKEND_ARTIFACTS.values() for name in names if (version_dir / name).exists()]
    if beside:
        raise ArchiveError(
            f"{version_dir.name}/ holds {archives[0].name} beside {', '.join(beside)}; keep exactly one model"
        )
    archive = read_archive(archives[0])
    served_config = archive.served_config(config)
    with tempfile.TemporaryDirectory(prefix="gateway-mar-") as work:
        folder = Path(work) / version_dir.name
        archive.extract_model(folder)
        if archive.backend == "onnxruntime":
            try:
                check_version_files(folder)
            except GatewayError as error:
                raise ArchiveError(f"{archive.describe()}: {error.message}") from None
        yield ServedVersion(folder, served_config, archive.metadata())
