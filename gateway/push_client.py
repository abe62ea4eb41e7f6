"""``gateway push``: convert a model on this machine, prove parity, and upload it (or write it into a repository).

Conversion runs on the client, so the server needs no framework to serve ONNX (the default format).
``--format native`` exports the model in its own framework's format instead (``model.pt2`` for torch,
a SavedModel for Keras, TensorFlow and JAX), served by the gateway's torch or tensorflow backend.
The converted version folder (the artifact, ``parity.json``) is packed as a gzip-compressed tar and sent to
``PUT /v2/repository/models/{name}/versions/{version}`` (``POST .../versions`` for the next version)
with the admin token, by :class:`gateway.client.GatewayClient`; with ``--repository`` it is checked and
installed into a local model repository by the same code the server runs
(:meth:`gateway.repository.model_repository.ModelRepository.install_version`), or committed to a
repository shared by replicas (``--repository s3://bucket/prefix``) as a replica commits an upload
(:meth:`gateway.repository.store.RepositoryFollower.install_version`). A push whose parity
check fails uploads nothing.

Before anything is converted, :func:`check_push_target` checks in well under a second what can fail
on the way out: a target given, a valid name, the server reachable and accepting the admin token, an
explicit version still free. Its module imports neither numpy nor ONNX nor the converters: they are
imported in the functions that parse input specs, convert and report, so that those checks answer
before the slow imports.
With ``--quantize int8``, ``--precision fp16`` or ``--optimize``, the checked ONNX model is compressed
and the price measured and stored with it (:mod:`converters.quantization`); a model over
``--max-accuracy-drop`` or ``--max-abs-error`` uploads nothing.
A TorchServe archive (``.mar``) is checked as the server checks it and pushed as it is, its version
folder holding the archive alone (:func:`push_archive`, :mod:`gateway.repository.mar`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.client import AdminTokenSource, ClientError, GatewayClient
from gateway.errors import GatewayError, InvalidArgumentError
from gateway.repository.names import check_model_name
from gateway.settings import GatewaySettings, store_uri

if TYPE_CHECKING:
    from converters.model import DynamicAxes, InputSpec, SourceModel
    from converters.parity import ParityReport
    from converters.pipeline import ConversionResult, ExportFormat
    from converters.quantization import CalibrationData, CompressionOptions, EvalData
    from converters.quantization_report import QuantizationReport
    from gateway.repository.mar import TorchServeArchive
    from gateway.repository.model_repository import ModelRepository

__all__ = [
    "PushError",
    "PushResult",
    "PushTarget",
    "TensorSummary",
    "check_push_target",
    "parse_dynamic_axes",
    "parse_input_spec",
    "push",
    "push_archive",
    "push_source",
    "stderr_progress",
]

#: The max_batch_size a pushed model gets from a server with default settings (it has no config.yaml).
DEFAULT_MAX_BATCH_SIZE: int = GatewaySettings.model_fields["default_max_batch_size"].default

Progress = Callable[[str], None]
T = TypeVar("T")


class PushError(Exception):
    """A push that cannot go on; the message says why and what to do. Nothing was uploaded or written."""


@dataclass(frozen=True)
class TensorSummary:
    """An input or output of the pushed model: name, v2 datatype and dims (symbol names for dynamic dims)."""

    name: str
    datatype: str
    dims: list[int | str]

    def describe(self) -> str:
        """E.g. ``input_ids INT64 [batch, sequence]``."""
        return f"{self.name} {self.datatype} [{', '.join(str(d) for d in self.dims)}]"


@dataclass(frozen=True)
class PushResult:
    """What a push created.

    Attributes:
        name, version: the model version created.
        ready: whether it is serving (its version policy may not select it).
        backend: the gateway backend that serves it (``onnxruntime``, ``torch``, ``tensorflow``).
        inputs, outputs: the model's tensors as served.
        parity: the parity figures (None for an ONNX file taken as it is).
        base_url: the server's URL, or None for a push into a local repository.
        quantization: the price of the compression (int8, fp16, optimization), or None without one.
    """

    name: str
    version: int
    ready: bool
    backend: str
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    parity: ParityReport | None
    base_url: str | None
    quantization: QuantizationReport | None = None

    def to_json(self) -> dict[str, Any]:
        """What ``gateway push --json`` prints: the fields above, tensors as ``{"name", "datatype", "dims"}``,
        parity as in ``parity.json`` (None when not checked), quantization as in ``quantization.json``
        (None without a compression), ``server`` the base URL (None: a local repository)."""
        return {
            "name": self.name,
            "version": self.version,
            "ready": self.ready,
            "backend": self.backend,
            "inputs": [asdict(tensor) for tensor in self.inputs],
            "outputs": [asdict(tensor) for tensor in self.outputs],
            "parity": _parity_json(self.parity),
            "quantization": self.quantization.to_json() if self.quantization is not None else None,
            "server": self.base_url,
        }

    def summary(self) -> str:
        """The closing text: name, version, inputs, outputs, the parity and price tables, and a curl line to try it."""
        from backends import BACKEND_RUNTIMES

        lines = [f"model {self.name} version {self.version} {'is ready' if self.ready else 'was written'}"]
        lines.append(f"served by: {self.backend} backend ({BACKEND_RUNTIMES[self.backend]})")
        lines += ["inputs:"] + [f"  {tensor.describe()}" for tensor in self.inputs]
        lines += ["outputs:"] + [f"  {tensor.describe()}" for tensor in self.outputs]
        if self.parity is not None:
            lines += [f"parity ({BACKEND_RUNTIMES[self.backend]} against the original model):", self.parity.table()]
        else:
            lines.append("parity: not checked (the model file is served as it is, not converted)")
        if self.quantization is not None:
            lines += ["price of the compression:", self.quantization.table()]
        base_url = self.base_url or "http://127.0.0.1:8000"
        lines += ["try it:", _curl_line(base_url, self.name, self.version, self.inputs)]
        return "\n".join(lines)


def _curl_line(base_url: str, name: str, version: int, inputs: Sequence[TensorSummary]) -> str:
    """A curl command sending one all-zero request (every dynamic dim of length 1)."""
    tensors = []
    for tensor in inputs:
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in tensor.dims]
        count = 1
        for dim in shape:
            count *= dim
        zero: Any = False if tensor.datatype == "BOOL" else 0
        tensors.append({"name": tensor.name, "shape": shape, "datatype": tensor.datatype, "data": [zero] * count})
    body = json.dumps({"inputs": tensors}, separators=(",", ":"))
    url = f"{base_url.rstrip('/')}/v2/models/{name}/versions/{version}/infer"
    return f"curl -s {url} -H 'Content-Type: application/json' -d '{body}'"


def parse_dynamic_axes(values: Sequence[str]) -> dict[str, dict[int, str]]:
    """Parse ``--dynamic-axes NAME:AXIS=LABEL,...`` values, e.g. ``input_ids:0=batch,1=sequence``.

    Raises:
        PushError: a value of another form, or an input named twice.
    """
    axes: dict[str, dict[int, str]] = {}
    for value in values:
        name, _, spec = value.partition(":")
        if not name or not spec:
            raise PushError(f"--dynamic-axes {value!r}: expected NAME:AXIS=LABEL[,AXIS=LABEL...]")
        if name in axes:
            raise PushError(f"--dynamic-axes names input {name!r} twice; give all its axes in one value")
        labels: dict[int, str] = {}
        for item in spec.split(","):
            axis, _, label = item.partition("=")
            if not (axis.strip().isascii() and axis.strip().isdigit()) or not label.strip():
                raise PushError(f"--dynamic-axes {value!r}: {item!r} is not AXIS=LABEL (e.g. 1=sequence)")
            labels[int(axis)] = label.strip()
        axes[name] = labels
    return axes


def parse_input_spec(value: str, dynamic_axes: DynamicAxes | None = None) -> InputSpec:
    """Parse ``--input-spec NAME:DATATYPE:DIMS``, e.g. ``input:FP32:-1,64``.

    A ``-1`` dim is dynamic: dim 0 is labelled ``batch``, others take their ``--dynamic-axes`` label
    or ``<name>_<axis>``. Datatypes are the KServe v2 names (FP32, INT64, BOOL...).

    Raises:
        PushError: a value of another form, an unknown datatype, or a dim that is neither -1 nor positive.
    """
    from converters.model import BATCH_LABEL, InputSpec
    from gateway.datatypes import numpy_dtype

    parts = value.split(":")
    if len(parts) != 3 or not parts[0]:
        raise PushError(f"--input-spec {value!r}: expected NAME:DATATYPE:DIMS, e.g. input:FP32:-1,64")
    name, datatype, dims_text = parts
    try:
        dtype = numpy_dtype(datatype.upper())
    except GatewayError as error:
        raise PushError(f"--input-spec {value!r}: {error.message}") from None
    labels = (dynamic_axes or {}).get(name, {})
    dims: list[int | str] = []
    for axis, text in enumerate(dims_text.split(",")):
        try:
            size = int(text)
        except ValueError:
            raise PushError(f"--input-spec {value!r}: dim {text!r} is not an integer") from None
        if size == -1:
            dims.append(labels.get(axis, BATCH_LABEL if axis == 0 else f"{name}_{axis}"))
        elif size > 0:
            dims.append(labels.get(axis, size))
        else:
            raise PushError(f"--input-spec {value!r}: dims are positive sizes or -1 (dynamic)")
    return InputSpec(name, dtype, tuple(dims))


def _parity_json(report: ParityReport | None) -> dict[str, Any] | None:
    """The report as ``parity.json`` holds it, or None."""
    from converters.parity import parity_to_json

    return parity_to_json(report) if report is not None else None


def _summaries(specs: Sequence[InputSpec]) -> list[TensorSummary]:
    """The tensors of a converted model as v2 datatypes and dims."""
    from gateway.datatypes import v2_datatype

    return [TensorSummary(spec.name, v2_datatype(spec.dtype), list(spec.dims)) for spec in specs]


@dataclass(frozen=True)
class PushTarget:
    """Where a push goes, as :func:`check_push_target` checked it.

    Attributes:
        name: the model name (valid).
        version: the version to create (free when checked), or None for the next one.
        server: the gateway's base URL, or None for a local repository.
        token: the admin token the gateway accepted, and where it was found (None for a local repository).
        repository: the local model repository folder, or a shared repository's URI (``s3://bucket/prefix``,
            ``file:///shared/folder``...), or None for a gateway.
    """

    name: str
    version: int | None
    server: str | None = None
    token: AdminTokenSource | None = None
    repository: Path | str | None = None


def check_push_target(
    name: str,
    *,
    version: int | None = None,
    server: str | None = None,
    token: str | None = None,
    repository: Path | str | None = None,
) -> PushTarget:
    """Check, before anything is converted, what would make the push fail on the way out.

    Each check answers in well under a second: the name is a model name; exactly one of ``server``
    and ``repository`` is given; ``version`` is positive; the gateway answers and accepts the admin
    token (``GET /v2/repository/token``, which changes nothing); and an explicit ``version`` does not
    exist yet (``GET /v2/repository/models/{name}`` lists every version folder on the server; for a
    repository, its folder).

    Args:
        name: the model name (``[A-Za-z0-9_.-]+``).
        version: the version to create, or None for the next one.
        server: the gateway's base URL (e.g. ``http://127.0.0.1:8000``); exclusive with ``repository``.
        token: the admin token (default: ``$GATEWAY_ADMIN_TOKEN`` or the token file of a gateway on
            this machine, see :func:`gateway.client.resolve_token`).
        repository: a local model repository folder to write into instead of uploading, or a shared
            repository's URI (``s3://bucket/prefix``, ``gs://``, ``az://``, ``file:///shared/folder``), where
            the version is committed as the replicas' pushes commit it
            (:class:`gateway.repository.store.RepositoryStore`); its replicas serve it at their next poll.

    Raises:
        PushError: the first check that fails; the message names the next step to take.
    """
    if isinstance(repository, str) and store_uri(repository) is None:
        repository = Path(repository)
    try:
        check_model_name(name)
    except InvalidArgumentError as error:
        raise PushError(error.message) from None
    if server is None and repository is None:
        raise PushError(
            "nowhere to push: give --server URL (a running gateway, e.g. http://127.0.0.1:8000, or set "
            "GATEWAY_SERVER) or --repository PATH (a local model repository folder, or s3://bucket/prefix)"
        )
    if server is not None and repository is not None:
        raise PushError("give one of --server and --repository, not both")
    if version is not None and version < 1:
        raise PushError(f"--version must be a positive integer, got {version}")
    if isinstance(repository, str):
        return _check_store_target(name, version, repository)
    if repository is not None:
        if repository.exists() and not repository.is_dir():
            raise PushError(f"--repository {repository} is not a folder")
        if version is not None and (repository / name / str(version)).exists():
            raise PushError(
                f"model '{name}' version {version} exists already in {repository}; push without --version "
                f"to create the next version, or remove {repository / name / str(version)} first"
            )
        return PushTarget(name, version, repository=repository)
    assert server is not None
    with GatewayClient(server, token) as client:
        try:
            client.check_token()
            if version is not None:
                _check_version_free(client, name, version)
        except ClientError as error:
            raise PushError(str(error)) from None
        return PushTarget(name, version, server=client.server, token=client.token)


def _check_store_target(name: str, version: int | None, uri: str) -> PushTarget:
    """Check that the shared repository ``uri`` can be read and that an explicit ``version`` is free there.

    Raises:
        PushError: the store cannot be reached or read, or the version exists.
    """
    from gateway.repository.store import RepositoryStore, StoreError
    from gateway.settings import StoreSettings

    try:
        store = RepositoryStore(uri, StoreSettings())
        store.check()
        taken = version is not None and version in store.version_tags(name)
    except StoreError as error:
        raise PushError(str(error)) from None
    except Exception as error:
        raise PushError(str(store.error("cannot read", error))) from None
    if taken:
        raise PushError(
            f"model '{name}' version {version} exists already in {uri}; push without --version to create the "
            f"next version, or delete it first"
        )
    return PushTarget(name, version, repository=uri)


def _check_version_free(client: GatewayClient, name: str, version: int) -> None:
    """Raise :class:`PushError` when the gateway has a folder for ``version`` of model ``name``."""
    try:
        entries = client.model_versions(name)
    except ClientError as error:
        if error.status == 404:
            return  # a new model
        raise
    for entry in entries:
        if entry["version"] == str(version):
            raise PushError(
                f"model '{name}' version {version} exists already on {client.server} ({entry['state']}); push "
                f"without --version to create the next version, or delete it first: gateway delete {name}:{version}"
            )


def _upload(version_dir: Path, target: PushTarget, progress: Progress) -> dict[str, Any]:
    """Pack and upload a version folder to the target's gateway; returns the server's JSON answer.

    Raises:
        PushError: the server cannot be reached or refused the package (its message is included).
    """
    from gateway.repository.packages import pack_version

    assert target.server is not None
    with (
        tempfile.TemporaryDirectory(prefix="gateway-push-") as work,
        GatewayClient(target.server, target.token) as client,
    ):
        package = Path(work) / "package.tar.gz"
        pack_version(version_dir, package)
        size = package.stat().st_size
        where = f"{target.server}/v2/repository/models/{target.name}"
        progress(
            f"uploading {size / 1e6:.1f} MB to {where}" if size >= 1e6 else f"uploading {size / 1e3:.0f} kB to {where}"
        )
        try:
            return client.upload(package, target.name, target.version)
        except ClientError as error:
            raise PushError(str(error)) from None


#: The inputs and outputs of a version as the gateway serves it (shapes with -1 for variable dims).
ServedSignature = tuple[list["TensorSummary"], list["TensorSummary"]]


async def _install_locally(
    repository: Path | str, name: str, version: int | None, write: Callable[[Path], T]
) -> tuple[int, T, ServedSignature | None]:
    """Write a version straight into a staging folder of a local repository, check and install it.

    A shared repository (``repository`` a URI) gets it through a throwaway cache: checked and loaded
    there with the model's config from the store, then committed to the store.

    Returns:
        The version installed, what ``write`` returned, and the version's inputs and outputs as
        served (None when its version policy does not serve it).
    """
    from gateway.repository.model_repository import ModelRepository
    from gateway.repository.packages import check_version_files

    with contextlib.ExitStack() as cleanup:
        if isinstance(repository, str):
            from gateway.repository.store import RepositoryFollower, RepositoryStore
            from gateway.settings import StoreSettings

            cache = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="gateway-push-cache-")))
            repo = ModelRepository(cache, default_max_batch_size=DEFAULT_MAX_BATCH_SIZE)
            follower = RepositoryFollower(RepositoryStore(repository, StoreSettings()), repo, repo.metrics)
            await follower.fetch_model_config(name)
            install = follower.install_version
        else:
            repo = ModelRepository(repository, default_max_batch_size=DEFAULT_MAX_BATCH_SIZE)
            repository.mkdir(parents=True, exist_ok=True)
            install = repo.install_version
        async with repo.staging_folder() as staging:
            version_dir = staging / "version"
            result = await asyncio.to_thread(write, version_dir)
            await asyncio.to_thread(check_version_files, version_dir)
            number = await install(name, version, version_dir)
        return number, result, _served_signature(repo, name, number)


def _served_signature(repo: ModelRepository, name: str, number: int) -> ServedSignature | None:
    """The inputs and outputs of ``name`` version ``number`` as ``repo`` serves it, or None when it does not."""
    if number not in repo.ready_versions(name):
        return None
    loaded = repo.get(name, str(number))
    served = [
        [TensorSummary(tensor, signature.datatype, list(signature.shape)) for tensor, signature in tensors.items()]
        for tensors in (loaded.inputs, loaded.outputs)
    ]
    return served[0], served[1]


def _deliver(
    target: PushTarget, write: Callable[[Path], T], progress: Progress, *, describe: bool = False
) -> tuple[int, bool, T, ServedSignature | None]:
    """Write a version folder with ``write`` and install it into the target's repository, or upload it.

    Returns:
        The version created, whether it is ready, what ``write`` returned, and (for a local
        repository, or with ``describe`` for a gateway) its inputs and outputs as served when ready.

    Raises:
        PushError: the repository or the server refused the version (the reason is included).
    """
    if target.repository is not None:
        from gateway.repository.store import StoreError

        try:
            installed = _install_locally(target.repository, target.name, target.version, write)
            number, result, served = asyncio.run(installed)
        except GatewayError as error:
            raise PushError(f"the model cannot be written to {target.repository}: {error.message}") from None
        except StoreError as error:
            raise PushError(str(error)) from None
        return number, served is not None, result, served
    with tempfile.TemporaryDirectory(prefix="gateway-push-") as work:
        version_dir = Path(work) / "version"
        result = write(version_dir)
        answer = _upload(version_dir, target, progress)
    number, ready = int(answer["version"]), bool(answer["ready"])
    if not (describe and ready):
        return number, ready, result, None
    assert target.server is not None
    with GatewayClient(target.server, target.token) as client:
        try:
            metadata = client.model_metadata(target.name, str(number))
        except ClientError as error:
            progress(f"pushed, but its metadata cannot be read: {error}")
            return number, ready, result, None
    inputs, outputs = (
        [TensorSummary(tensor["name"], tensor["datatype"], list(tensor["shape"])) for tensor in metadata[key]]
        for key in ("inputs", "outputs")
    )
    return number, ready, result, (inputs, outputs)


def push_source(
    source: SourceModel,
    target: PushTarget,
    *,
    export_format: ExportFormat | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    compression: CompressionOptions | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Export ``source``, check parity, and upload it to the target's gateway or install it into its repository.

    Args:
        source: the model (see :mod:`converters.sources`).
        target: where it goes, from :func:`check_push_target`.
        export_format: ``onnx`` or ``native`` (see :func:`converters.pipeline.convert_model`); None:
            ONNX, said in a progress line, and a failed ONNX conversion suggests ``--format native``.
        atol, rtol: parity tolerances.
        compression: int8, fp16 or offline optimization of the ONNX model, with its data and guard
            (:class:`converters.quantization.CompressionOptions`); None: none.
        progress: called with a line before each long step.

    Raises:
        PushError: a conversion that fails (naming the cause), a parity check that fails (with its
            table), a compression that fails or is over its guard (with the figures), or a server or
            repository that refuses the package.
    """
    from backends import BACKEND_RUNTIMES
    from converters.model import ConversionError
    from converters.pipeline import ExportFormat, ParityError, convert_model
    from converters.quantization import QuantizationError

    report = progress or (lambda _: None)
    if export_format is None:
        report(
            "converting to ONNX, served by ONNX Runtime (the default; --format native serves the model "
            f"with the gateway's {source.native_backend} backend instead)"
        )

    def convert(version_dir: Path) -> ConversionResult:
        try:
            return convert_model(
                source,
                version_dir,
                export_format=export_format or ExportFormat.ONNX,
                atol=atol,
                rtol=rtol,
                compression=compression,
                max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                progress=report,
            )
        except ParityError as error:
            raise PushError(f"parity check failed; nothing was pushed.\n{error.report.table()}") from None
        except QuantizationError as error:
            raise PushError(f"nothing was pushed: {error}") from None
        except ConversionError as error:
            compressing = compression is not None and compression.active
            if export_format is None and source.native_backend != "onnxruntime" and not compressing:
                raise PushError(
                    f"{error}\nThe ONNX conversion failed; --format native exports the {source.framework} model "
                    f"in its own format instead, served by the gateway's {source.native_backend} backend "
                    f"({BACKEND_RUNTIMES[source.native_backend]} on the server)"
                ) from None
            raise PushError(str(error)) from None

    number, ready, result, _ = _deliver(target, convert, report)
    return PushResult(
        target.name,
        number,
        ready,
        result.backend,
        _summaries(result.input_specs),
        _summaries(result.output_specs),
        result.parity,
        target.server,
        result.quantization,
    )


def push_archive(
    path: Path,
    target: PushTarget,
    *,
    input_specs: list[InputSpec] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    export_format: ExportFormat | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    compression: CompressionOptions | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Push a TorchServe model archive (``.mar``): as it is, or its model file converted to ONNX.

    The archive is checked first, as the server checks it (:func:`gateway.repository.mar.read_archive`:
    safe members, a manifest, a default handler or none, no eager model); nothing from it runs.

    - As it is (the default, or ``--format native``): the version folder holds the archive alone,
      and the gateway (or the local repository) serves it as a dropped archive, its TorchScript or
      ``.pt2`` model with the torch backend, its ONNX model with ONNX Runtime. A TorchScript model
      needs a ``config.yaml`` among the archive's extra files listing its inputs and outputs.
    - Converted (``--format onnx``, ``--input-spec``, or a compression): the model file is extracted
      and pushed as that file would be (:func:`push_source`: ONNX, with the parity check);
      TorchScript needs ``--input-spec``, as a TorchScript file's push does.

    Args:
        path: the ``.mar`` file.
        target: where it goes, from :func:`check_push_target`.
        input_specs: the inputs of a TorchScript model to convert (``--input-spec``).
        dynamic_axes: extra dynamic axes, for a conversion.
        export_format: None or ``native``: as it is (unless converting is asked otherwise); ``onnx``: converted.
        atol, rtol, compression, progress: as :func:`push_source`.

    Raises:
        PushError: the archive is refused (the reason and what to do), the options do not go with
            it, or as :func:`push_source`.
    """
    from converters.pipeline import ExportFormat, example_from_specs
    from converters.sources import load_source
    from gateway.repository.mar import ARCHIVE_CONFIG, ArchiveError, read_archive

    report = progress or (lambda _: None)
    try:
        archive = read_archive(path)
    except ArchiveError as error:
        raise PushError(str(error)) from None
    converting = export_format is ExportFormat.ONNX or bool(input_specs)
    converting = converting or (compression is not None and compression.active)
    if not converting:
        if dynamic_axes:
            raise PushError("--dynamic-axes applies when the archive's model is converted to ONNX (--format onnx)")
        if archive.is_torchscript and not archive.has_config:
            raise PushError(
                f"{archive.describe()} holds TorchScript, which records no input or output shapes, and no "
                f"{ARCHIVE_CONFIG} among its extra files lists them: add one (torch-model-archiver --extra-files "
                f"{ARCHIVE_CONFIG}, with inputs and outputs as in a model's {ARCHIVE_CONFIG}) to serve the archive "
                "as it is with the torch backend, or give --input-spec to push its model converted to ONNX"
            )
        return _push_archive_as_is(archive, target, report)
    if export_format is ExportFormat.NATIVE:
        raise PushError(
            "--format native pushes the archive as it is: leave out --input-spec, --quantize, --precision and "
            "--optimize, which convert its model to ONNX"
        )
    if archive.is_torchscript and not input_specs:
        raise PushError(
            f"{archive.describe()} holds TorchScript, which records no input shapes: converting it to ONNX "
            "needs --input-spec"
        )
    report(f"extracting {archive.serialized_file} from {archive.path.name} to convert it")
    with tempfile.TemporaryDirectory(prefix="gateway-push-") as work:
        try:
            model_file = archive.extract_model(Path(work))
            source = load_source(
                str(model_file),
                input_specs=input_specs,
                example_inputs=example_from_specs(input_specs) if input_specs else None,
                dynamic_axes=dynamic_axes,
            )
        except (ArchiveError, ValueError) as error:
            raise PushError(f"{archive.path.name}: {error}") from None
        return push_source(
            source,
            target,
            export_format=ExportFormat.ONNX,
            atol=atol,
            rtol=rtol,
            compression=compression,
            progress=report,
        )


def _push_archive_as_is(archive: TorchServeArchive, target: PushTarget, progress: Progress) -> PushResult:
    """Upload (or install) a version folder holding the archive alone; the server loads it as a dropped one."""
    import shutil

    progress(f"pushing {archive.describe()} as it is, served by the gateway's {archive.backend} backend")

    def write(version_dir: Path) -> None:
        version_dir.mkdir(parents=True)
        shutil.copyfile(archive.path, version_dir / archive.path.name)

    number, ready, _, served = _deliver(target, write, progress, describe=True)
    inputs, outputs = served or ([], [])
    return PushResult(target.name, number, ready, archive.backend, inputs, outputs, None, target.server)


def push(
    model: Any,
    example_inputs: Sequence[Any],
    *,
    name: str,
    server: str | None = None,
    token: str | None = None,
    repository: Path | str | None = None,
    version: int | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    export_format: ExportFormat | str | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    quantize: str | None = None,
    precision: str | None = None,
    calibration_data: CalibrationData | None = None,
    per_channel: bool | None = None,
    fp16_io: bool = False,
    optimize: bool = False,
    eval_data: EvalData | None = None,
    max_accuracy_drop: float | None = None,
    max_abs_error: float | None = None,
    verbose: bool = True,
) -> PushResult:
    """Push an in-memory model from a notebook: what ``gateway push`` does for an entry point.

    Args:
        model: a torch ``nn.Module`` or ExportedProgram, a Keras model, or a JAX callable with its
            parameters closed over.
        example_inputs: one example array per input, batch first (e.g. ``float32 [2, 64]``).
        name: the model name.
        server: the gateway's base URL; or ``repository``, a local model repository folder.
        token: the admin token (default: ``$GATEWAY_ADMIN_TOKEN`` or a local server's token file).
        version: the version to create, or None for the next one.
        dynamic_axes: extra dynamic axes per input, e.g. ``{"input_ids": {1: "sequence"}}``.
        export_format: ``"onnx"`` or ``"native"`` (the model's own format, served by the torch or
            tensorflow backend); None: ONNX.
        atol, rtol: parity tolerances.
        quantize, precision, calibration_data, per_channel, fp16_io, optimize, eval_data, max_accuracy_drop,
            max_abs_error: compress the ONNX model and measure the price, as ``gateway push --quantize int8``
            etc. (:class:`converters.quantization.CompressionOptions`); calibration and eval data may
            also be given in memory (an iterable of dicts of arrays; a dict of arrays with ``labels``).
        verbose: print progress and the summary to stderr.

    Returns:
        The pushed model's :class:`PushResult`.

    Raises:
        PushError: as :func:`check_push_target` (before anything is converted) and :func:`push_source`;
            ValueError: a model of no supported kind, an unknown format, or compression options that do
            not go together.
    """
    from converters.pipeline import ExportFormat
    from converters.quantization import CompressionOptions
    from converters.sources import source_from_object

    compression = CompressionOptions(
        quantize=quantize,
        precision=precision,
        calibration_data=calibration_data,
        per_channel=per_channel,
        fp16_io=fp16_io,
        optimize=optimize,
        eval_data=eval_data,
        max_accuracy_drop=max_accuracy_drop,
        max_abs_error=max_abs_error,
    )
    target = check_push_target(
        name,
        version=version,
        server=server,
        token=token,
        repository=repository,
    )
    progress = stderr_progress() if verbose else None
    source = source_from_object(model, example_inputs, dynamic_axes=dynamic_axes)
    result = push_source(
        source,
        target,
        export_format=ExportFormat(export_format) if export_format is not None else None,
        atol=atol,
        rtol=rtol,
        compression=compression,
        progress=progress,
    )
    if verbose:
        print(result.summary(), file=sys.stderr)
    return result


def stderr_progress() -> Progress:
    """A progress printer: ``[  1.2s] <step>`` lines on stderr, timed from its creation."""
    started = time.monotonic()

    def show(step: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {step}", file=sys.stderr, flush=True)

    return show
