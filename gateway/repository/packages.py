"""Model packages: receiving an upload, unpacking it safely, and checking the files of a model version.

A package is a tar archive, gzip-compressed or not, whose members are the files of one version
folder (the artifact, ``model.onnx``, ``model.pt2``, the ``model.savedmodel/`` folder or a TorchServe
archive ``<name>.mar``, and ``parity.json`` and ``quantization.json`` at its top level, as ``gateway
push`` writes them). It is received and unpacked in a staging folder inside the repository; nothing
reaches the model's folder until every check passed
(:meth:`gateway.repository.model_repository.ModelRepository.install_version`).

Unpacking refuses absolute paths, ``..``, links of any kind, devices and FIFOs, and packages whose
declared sizes add up past the upload limit (checked before anything is written, so a compressed
bomb cannot fill the disk). The members of a zip archive, a TorchServe ``.mar``, are checked by the
same rules (:func:`check_zip_members`).
"""

from __future__ import annotations

import json
import stat
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from backends.base import ModelLoadError
from backends.onnxruntime import check_external_data
from converters.parity import PARITY_FILE
from converters.quantization_report import QUANTIZATION_FILE
from gateway.errors import InvalidArgumentError, PayloadTooLargeError

__all__ = [
    "MAX_PACKAGE_MEMBERS",
    "check_version_files",
    "check_zip_members",
    "pack_version",
    "receive_package",
    "unpack_package",
]

#: Most files and folders a package may hold.
MAX_PACKAGE_MEMBERS = 10_000


async def receive_package(chunks: AsyncIterator[bytes], destination: Path, limit_bytes: int) -> int:
    """Write an upload's body to ``destination``, refusing it as soon as it passes ``limit_bytes``.

    Returns:
        The number of bytes received.

    Raises:
        PayloadTooLargeError: the body is larger than ``limit_bytes``.
        InvalidArgumentError: the body is empty.
    """
    received = 0
    with destination.open("wb") as handle:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit_bytes:
                raise PayloadTooLargeError(f"the package is larger than the upload limit of {limit_bytes} bytes")
            handle.write(chunk)
    if received == 0:
        raise InvalidArgumentError("the upload is empty; send the model package (a tar archive) as the body")
    return received


def _path_problem(name: str) -> str | None:
    """Why a member's path may not be unpacked (absolute, or with ``..``, ``\\`` counting as ``/``), or None."""
    if PurePosixPath(name).is_absolute() or name.startswith("\\") or name[1:2] == ":":
        return "has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "has '..' in its path"
    return None


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be unpacked, or None when it may."""
    path_problem = _path_problem(member.name)
    if path_problem is not None:
        return path_problem
    if member.issym() or member.islnk():
        return "is a link"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or folder"
    return None


def unpack_package(package: Path, destination: Path, limit_bytes: int) -> None:
    """Unpack a tar package into the empty folder ``destination`` after checking every member.

    Raises:
        InvalidArgumentError: not a tar archive, no files, too many members, or a member with an
            absolute path, ``..``, a link, a device or a FIFO (the message names the member).
        PayloadTooLargeError: the members' sizes add up past ``limit_bytes``.
    """
    try:
        archive = tarfile.open(package, mode="r:*")  # noqa: SIM115 (closed by the with block below)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise InvalidArgumentError(f"the package is not a tar archive (gzip-compressed or not): {error}") from None
    with archive:
        try:
            members = archive.getmembers()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise InvalidArgumentError(f"the package is a damaged tar archive: {error}") from None
        if len(members) > MAX_PACKAGE_MEMBERS:
            raise InvalidArgumentError(f"the package holds {len(members)} members; at most {MAX_PACKAGE_MEMBERS}")
        for member in members:
            problem = _member_problem(member)
            if problem is not None:
                raise InvalidArgumentError(f"package member '{member.name}' {problem}; refused")
        if sum(member.size for member in members if member.isfile()) > limit_bytes:
            raise PayloadTooLargeError(f"the package unpacks to more than the upload limit of {limit_bytes} bytes")
        if not any(member.isfile() for member in members):
            raise InvalidArgumentError("the package holds no files")
        destination.mkdir(parents=True, exist_ok=True)
        try:
            # The "data" filter checks again (paths inside destination, no special files) as it writes.
            archive.extractall(destination, members=members, filter="data")
        except (tarfile.TarError, EOFError, OSError) as error:
            raise InvalidArgumentError(f"the package cannot be unpacked: {error}") from None


def check_zip_members(archive: zipfile.ZipFile, limit_bytes: int | None = None) -> None:
    """Check every member of a zip archive (a TorchServe ``.mar``) by the rules of a package's members.

    Nothing is unpacked: the members are read from the archive's central directory. A member is
    refused for an absolute path, ``..`` in its path, a link or special file (its Unix mode), a
    name given twice, or encryption; the archive for more than :data:`MAX_PACKAGE_MEMBERS` members,
    or sizes that add up past ``limit_bytes`` (zipfile never reads a member past its declared size).

    Raises:
        InvalidArgumentError: the first problem found; the message names the member.
        PayloadTooLargeError: the members' sizes add up past ``limit_bytes``.
    """
    members = archive.infolist()
    if len(members) > MAX_PACKAGE_MEMBERS:
        raise InvalidArgumentError(f"the archive holds {len(members)} members; at most {MAX_PACKAGE_MEMBERS}")
    seen: set[str] = set()
    for member in members:
        file_type = stat.S_IFMT(member.external_attr >> 16)  # 0 when the archive records no Unix mode
        problem = _path_problem(member.filename)
        if problem is None and stat.S_ISLNK(file_type):
            problem = "is a link"
        elif problem is None and file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            problem = "is not a regular file or folder"
        elif problem is None and member.flag_bits & 0x1:
            problem = "is encrypted"
        elif problem is None and member.filename in seen:
            problem = "appears twice"
        if problem is not None:
            raise InvalidArgumentError(f"archive member '{member.filename}' {problem}; refused")
        seen.add(member.filename)
    if limit_bytes is not None and sum(member.file_size for member in members) > limit_bytes:
        raise PayloadTooLargeError(f"the archive unpacks to more than the upload limit of {limit_bytes} bytes")


def check_version_files(version_dir: Path, limit_bytes: int | None = None) -> None:
    """Check the files of an unpacked version: every ``.onnx`` passes ``onnx.checker``, every ``.mar``
    holds safe members, the reports are JSON objects.

    Before the checker opens anything, every ``.onnx`` must keep its external data inside
    ``version_dir`` (:func:`backends.onnxruntime.check_external_data`, which the ONNX Runtime backend
    runs again at every load). A TorchServe archive (``.mar``) is a zip whose members must pass
    :func:`check_zip_members` within ``limit_bytes``; what it holds is checked when it loads
    (:mod:`gateway.repository.mar`). The reports a push stores, ``parity.json`` and
    ``quantization.json``, must each hold a JSON object when present.

    Args:
        version_dir: the unpacked version folder.
        limit_bytes: the most bytes an archive inside may unpack to (the upload limit); None: no limit.

    Raises:
        InvalidArgumentError: a file that fails its check; the message names it and says why (for
            external data: the tensor and its location).
        PayloadTooLargeError: an archive inside unpacks past ``limit_bytes``.
    """
    for archive_file in sorted(version_dir.rglob("*.mar")):
        relative = archive_file.relative_to(version_dir)
        try:
            with zipfile.ZipFile(archive_file) as archive:
                check_zip_members(archive, limit_bytes)
        except (zipfile.BadZipFile, OSError) as error:
            raise InvalidArgumentError(f"{relative} is not a TorchServe model archive (a zip file): {error}") from None
        except InvalidArgumentError as error:
            raise InvalidArgumentError(f"{relative}: {error.message}") from None
        except PayloadTooLargeError as error:
            raise PayloadTooLargeError(f"{relative}: {error.message}") from None
    for model_file in sorted(version_dir.rglob("*.onnx")):
        try:
            check_external_data(model_file, version_dir)
        except ModelLoadError as error:
            raise InvalidArgumentError(str(error)) from None
        import onnx  # here, not at the top: a front end that receives no upload never imports it

        try:
            onnx.checker.check_model(str(model_file), full_check=True)
        except Exception as error:  # checker and protobuf raise several types for a bad file
            relative = model_file.relative_to(version_dir)
            raise InvalidArgumentError(f"{relative} is not a valid ONNX model: {error}") from None
    for report_name in (PARITY_FILE, QUANTIZATION_FILE):
        report_file = version_dir / report_name
        if not report_file.exists():
            continue
        try:
            report = json.loads(report_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidArgumentError(f"{report_name} is not valid JSON: {error}") from None
        if not isinstance(report, dict):
            raise InvalidArgumentError(f"{report_name} must hold a JSON object")


def pack_version(version_dir: Path, package: Path) -> None:
    """Pack the files of ``version_dir`` into a gzip-compressed tar ``package`` (paths relative to it).

    Only regular files and folders are packed; links are refused.

    Raises:
        ValueError: the folder holds a link or a special file.
    """
    with tarfile.open(package, mode="w:gz") as archive:
        for path in sorted(version_dir.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise ValueError(f"{path} is a link or a special file; a package holds regular files only")
            archive.add(path, arcname=str(path.relative_to(version_dir)), recursive=False)
