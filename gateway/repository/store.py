"""A model repository shared by several replicas: in object storage or a shared folder, followed through a cache.

The repository is given as an fsspec URI: ``s3://bucket/prefix`` (s3fs; any S3-compatible store),
``gs://`` (gcsfs), ``az://`` (adlfs), or ``file:///mnt/models`` (a folder every replica mounts: NFS, a
Kubernetes ReadWriteMany volume). Its layout is the commit protocol's::

    <root>/<model>/config.yaml or config.pbtxt        optional, as in a local repository
    <root>/<model>/traffic.json                       the traffic policy set through the management API
    <root>/<model>/uploads/<upload id>/<files>        a version's files, written first (the staging key)
    <root>/<model>/versions/<version>.json            its manifest, written last: the commit marker

A version exists when its manifest exists. The manifest (:class:`VersionManifest`) names the upload
that holds the files and records each file's size and SHA-256, and it is created with a conditional
write that fails when the key exists (S3 ``PutObject`` with ``If-None-Match: *``; in a shared folder a
hard link, which fails when the target exists): two pushes can never commit the same number, and a
push asking for "the next version" takes the next free number when it loses the race. A push killed
before its manifest leaves an upload no manifest names: not a version, and removed by a later push
once older than :data:`STALE_UPLOAD_SECONDS`. A delete removes the manifests first.

Each replica serves the repository from a local cache folder (:class:`RepositoryFollower`): the
:class:`~gateway.repository.model_repository.ModelRepository` loads from that folder as from any
local repository, so backends never see a URI. A poll lists the model folders and manifests (their
etag, generation or size and mtime: no file is read when nothing changed), downloads the versions
the model's version policy selects that the cache lacks, checks every file against the manifest's
digest, moves the version into the cache in one rename, and removes what the repository no longer
holds; then the cache is polled as a local repository. When the store cannot be reached the replica
keeps serving what it has, says so once in the log and in ``gateway_repository_stale``, and follows
again when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import AlreadyExistsError, GatewayError, NotFoundError, UnavailableError
from gateway.metrics import Metrics
from gateway.repository.config import CONFIG_FILE, ModelConfig, ModelConfigError
from gateway.repository.model_repository import STAGING_FOLDER, ModelRepository, read_config
from gateway.repository.names import valid_model_name
from gateway.repository.traffic import TRAFFIC_FILE
from gateway.repository.triton_config import CONFIG_PBTXT
from gateway.settings import StoreSettings

logger = logging.getLogger(__name__)

#: Sub-folder of a model holding its manifests, one per committed version (``<version>.json``).
MANIFESTS_FOLDER = "versions"
#: Sub-folder of a model holding each push's files under its upload id.
UPLOADS_FOLDER = "uploads"
#: Seconds after which an upload that no manifest names (a push that died) is removed by a later push.
STALE_UPLOAD_SECONDS = 3600.0
#: The files a model folder may hold beside its versions (its config, its traffic policy), copied into
#: the cache as they are.
CONFIG_FILES = (CONFIG_FILE, CONFIG_PBTXT, TRAFFIC_FILE)
#: The tag recorded for a file this replica changed but could not write to the store: it matches no
#: store object, so the next poll takes the store's file (or its absence) again.
_UNPUBLISHED = "unpublished"
#: Where the cache keeps which manifest each cached version and config file came from.
CACHE_STATE_FILE = ".store-state.json"
#: Bytes read at a time when a file's digest is computed.
_HASH_CHUNK_BYTES = 1024 * 1024
#: Most numbers a push for "the next version" tries when other pushes keep taking them.
_MAX_COMMIT_ATTEMPTS = 100


class StoreError(Exception):
    """The shared model repository cannot be reached, read or written; the message names its URI and the cause."""


class FileDigest(BaseModel):
    """One file of a version as the manifest records it: size in bytes and SHA-256 (hex)."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class VersionManifest(BaseModel):
    """The commit marker of one version (``<model>/versions/<version>.json``), written after its files.

    Attributes:
        model: the model name.
        version: the version number.
        upload: the upload id; the files are under ``<model>/uploads/<upload>/``.
        created_seconds: Unix time of the commit.
        files: per file path (relative, ``/``-separated), its size and SHA-256.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    model: str
    version: int = Field(ge=1)
    upload: str = Field(pattern=r"^[0-9]+-[0-9a-f]{32}$")
    created_seconds: float
    files: dict[str, FileDigest]


@dataclass(frozen=True)
class ModelListing:
    """What one poll saw of a model: the tag (etag, generation, or size and mtime) of each config file and manifest."""

    configs: dict[str, str] = field(default_factory=dict)
    versions: dict[int, str] = field(default_factory=dict)


def digest_folder(folder: Path) -> dict[str, FileDigest]:
    """Size and SHA-256 of every file under ``folder``, by ``/``-separated relative path."""
    digests: dict[str, FileDigest] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digests[path.relative_to(folder).as_posix()] = FileDigest(size=path.stat().st_size, sha256=_sha256(path))
    return digests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _tag(info: dict[str, Any]) -> str:
    """What tells one state of a store object from another without reading it: etag, generation, or size and mtime."""
    for key in ("ETag", "etag", "generation"):
        if info.get(key):
            return str(info[key])
    return f"{info.get('size')}:{info.get('mtime', info.get('LastModified', info.get('last_modified')))}"


def _upload_id() -> str:
    """A new upload id: the Unix time in seconds (for stale cleaning), then a random part."""
    return f"{int(time.time())}-{uuid.uuid4().hex}"


def _safe_relative_path(name: str) -> PurePosixPath:
    """A manifest's file path, refused when absolute or climbing out with ``..``.

    Raises:
        StoreError: an unsafe path (a manifest written by something else than a push).
    """
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise StoreError(f"a manifest names the unsafe file path {name!r}")
    return path


class RepositoryStore:
    """A shared model repository at ``uri``: list, read, commit and delete versions (blocking calls).

    Args:
        uri: ``s3://bucket/prefix``, ``gs://...``, ``az://...`` or ``file:///folder``.
        settings: the S3 endpoint, region and credentials (unset: the AWS variables and credential chain).

    Raises:
        StoreError: the URI's filesystem is not installed (e.g. s3fs for ``s3://``), or one S3 key of the pair
            is given without the other.
    """

    def __init__(self, uri: str, settings: StoreSettings | None = None) -> None:
        import fsspec

        self.uri = uri.rstrip("/")
        protocol = self.uri.partition("://")[0].lower()
        self._local = protocol == "file"
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri, **_storage_options(protocol, settings))
        except ImportError as error:
            raise StoreError(
                f"cannot open {self.uri}: {error} (install the gateway's extra for it: "
                "pip install 'model-gateway[s3]', [gcs] or [azure])"
            ) from None
        self.root = self.root.rstrip("/")
        if protocol == "s3":
            self.fs.retries = 2  # s3fs's own retries of a failed call (5 by default), on top of botocore's

    def check(self) -> None:
        """Check that the repository can be listed; a missing local folder is created.

        Raises:
            StoreError: the store cannot be reached, the credentials are refused, or the bucket does not exist.
        """
        try:
            if self._local:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            self.fs.invalidate_cache()
            try:
                self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                bucket = self.root.split("/", 1)[0]
                if not self._local and not self.fs.exists(bucket):
                    raise StoreError(f"cannot open {self.uri}: bucket '{bucket}' does not exist") from None
        except StoreError:
            raise
        except Exception as error:
            raise self.error("cannot open", error) from None

    def error(self, action: str, error: BaseException) -> StoreError:
        """A :class:`StoreError` naming the URI and the cause of ``error`` (never a credential)."""
        if isinstance(error, PermissionError):
            cause = f"access denied, check the credentials ({_describe(error)})"
        else:
            cause = _describe(error)
        return StoreError(f"{action} the model repository {self.uri}: {cause}")

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def manifest_path(self, name: str, version: int) -> str:
        """The key of model ``name`` version ``version``'s manifest."""
        return self._path(name, MANIFESTS_FOLDER, f"{version}.json")

    def list_models(self) -> dict[str, ModelListing]:
        """Every model folder with its config files' and manifests' tags: one listing per model, no file read."""
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return {}
        models: dict[str, ModelListing] = {}
        for entry in entries:
            name = PurePosixPath(entry["name"]).name
            if entry["type"] == "directory" and valid_model_name(name):
                models[name] = self.model_listing(name)
        return models

    def model_listing(self, name: str) -> ModelListing:
        """Model ``name``'s config files and manifests with their tags (empty when there is no such model)."""
        listing = ModelListing()
        for item in self._ls(self._path(name)):
            item_name = PurePosixPath(item["name"]).name
            if item["type"] == "file" and item_name in CONFIG_FILES:
                listing.configs[item_name] = _tag(item)
        listing.versions.update(self.version_tags(name))
        return listing

    def version_tags(self, name: str) -> dict[int, str]:
        """The committed versions of model ``name`` (their manifests) with each manifest's tag."""
        versions: dict[int, str] = {}
        for item in self._ls(self._path(name, MANIFESTS_FOLDER)):
            stem, _, suffix = PurePosixPath(item["name"]).name.partition(".")
            if item["type"] == "file" and suffix == "json" and stem.isascii() and stem.isdigit():
                versions[int(stem)] = _tag(item)
        return versions

    def _ls(self, path: str) -> list[dict[str, Any]]:
        try:
            return list(self.fs.ls(path, detail=True))
        except FileNotFoundError:
            return []

    def read_manifest(self, name: str, version: int) -> VersionManifest:
        """Model ``name`` version ``version``'s manifest.

        Raises:
            FileNotFoundError: no such version.
            StoreError: the manifest is not one a push writes.
        """
        data = self.fs.cat_file(self.manifest_path(name, version))
        try:
            manifest = VersionManifest.model_validate_json(data)
        except ValidationError as error:
            raise StoreError(f"{self.manifest_path(name, version)} is not a version manifest: {error}") from None
        if manifest.model != name or manifest.version != version:
            raise StoreError(f"{self.manifest_path(name, version)} names model {manifest.model} {manifest.version}")
        return manifest

    def download_version(self, name: str, version: int, destination: Path) -> int:
        """Download model ``name`` version ``version``'s files into ``destination`` and check their digests.

        Returns:
            The bytes downloaded.

        Raises:
            FileNotFoundError: the version was deleted meanwhile.
            StoreError: a file's size or SHA-256 differs from the manifest (the download is refused).
        """
        manifest = self.read_manifest(name, version)
        downloaded = 0
        for relative, digest in manifest.files.items():
            target = destination.joinpath(*_safe_relative_path(relative).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self._path(name, UPLOADS_FOLDER, manifest.upload, relative), str(target))
            downloaded += target.stat().st_size
            if target.stat().st_size != digest.size or _sha256(target) != digest.sha256:
                raise StoreError(
                    f"{self.uri}: model '{name}' version {version} file {relative} does not match the digest its "
                    "manifest records; not served"
                )
        return downloaded

    def download_file(self, name: str, file_name: str, destination: Path) -> None:
        """Download a model folder's file (its config) to ``destination`` (written whole, then renamed)."""
        partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}")
        try:
            self.fs.get_file(self._path(name, file_name), str(partial))
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)

    def upload_file(self, name: str, file_name: str, source: Path) -> str:
        """Write ``source`` as model ``name``'s file ``file_name`` (one object put: a reader sees the old or
        the new); the new object's tag."""
        path = self._path(name, file_name)
        self.fs.put_file(str(source), path)
        self.fs.invalidate_cache()
        return _tag(self.fs.info(path))

    def commit_version(self, name: str, version: int | None, folder: Path) -> tuple[int, str]:
        """Commit the files of ``folder`` as a version of model ``name``: files first, the manifest last.

        Args:
            name: the model name.
            version: the version to create, or None for the next free number (retried when another push
                takes it first).
            folder: the version's files.

        Returns:
            The version committed and its manifest's tag.

        Raises:
            AlreadyExistsError: ``version`` exists already (or another push committed it first).
            StoreError: the store cannot be written; no version is visible, and the upload's files are
                removed when the store allows.
        """
        files = digest_folder(folder)
        upload = _upload_id()
        base = self._path(name, UPLOADS_FOLDER, upload)
        try:
            for relative in files:
                remote = f"{base}/{relative}"
                if self._local:
                    Path(remote).parent.mkdir(parents=True, exist_ok=True)
                self.fs.put_file(str(folder / relative), remote)
            for _ in range(_MAX_COMMIT_ATTEMPTS):
                number = version if version is not None else max(self.version_tags(name), default=0) + 1
                manifest = VersionManifest(
                    model=name, version=number, upload=upload, created_seconds=time.time(), files=files
                )
                try:
                    self._create(self.manifest_path(name, number), manifest.model_dump_json(indent=1).encode())
                except FileExistsError:
                    if version is not None:
                        raise AlreadyExistsError(f"model '{name}' version {version} exists already") from None
                    continue
                tag = _tag(self.fs.info(self.manifest_path(name, number)))
                break
            else:
                raise StoreError(f"{self.uri}: no free version number for model '{name}' after many attempts")
        except BaseException as error:
            with contextlib.suppress(Exception):
                self.fs.rm(base, recursive=True)
            if isinstance(error, AlreadyExistsError | StoreError) or not isinstance(error, Exception):
                raise
            raise self.error("cannot write", error) from None
        with contextlib.suppress(Exception):  # housekeeping: a failure here leaves the version committed
            self.remove_stale_uploads(name)
        return number, tag

    def _create(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` unless it exists: in one step that fails when another writer got there first.

        Raises:
            FileExistsError: ``path`` exists.
        """
        if not self._local:
            self.fs.pipe_file(path, data, mode="create")  # S3: PutObject with If-None-Match: *
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            with partial.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(partial, target)  # fails with FileExistsError when the target exists (NFS too)
        finally:
            partial.unlink(missing_ok=True)

    def delete(self, name: str, version: int | None) -> list[int]:
        """Delete a version of model ``name`` (or the whole model): manifests first, then the files.

        Returns:
            The versions deleted, ascending.

        Raises:
            NotFoundError: no such model or version.
            StoreError: the store cannot be written.
        """
        try:
            committed = sorted(self.version_tags(name))
            if version is None:
                if not committed and not self._ls(self._path(name)):
                    raise NotFoundError(f"no model '{name}' in the repository {self.uri}")
                deleted = committed
            elif version in committed:
                deleted = [version]
            else:
                listed = ", ".join(str(v) for v in committed) or "none"
                raise NotFoundError(f"model '{name}' has no version {version} (versions in {self.uri}: {listed})")
            uploads = []
            for number in deleted:
                with contextlib.suppress(FileNotFoundError, StoreError):
                    uploads.append(self.read_manifest(name, number).upload)
            for number in deleted:
                self.fs.rm_file(self.manifest_path(name, number))
            if version is None:
                self.fs.rm(self._path(name), recursive=True)
            else:
                for upload in uploads:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm(self._path(name, UPLOADS_FOLDER, upload), recursive=True)
        except GatewayError:
            raise
        except Exception as error:
            raise self.error("cannot delete from", error) from None
        return deleted

    def remove_stale_uploads(self, name: str, older_than_seconds: float = STALE_UPLOAD_SECONDS) -> list[str]:
        """Remove model ``name``'s uploads that no manifest names and that are older than ``older_than_seconds``.

        Returns:
            The upload ids removed.
        """
        named = set()
        for number in self.version_tags(name):
            with contextlib.suppress(FileNotFoundError, StoreError):
                named.add(self.read_manifest(name, number).upload)
        removed = []
        now = time.time()
        for item in self._ls(self._path(name, UPLOADS_FOLDER)):
            upload = PurePosixPath(item["name"]).name
            started = upload.partition("-")[0]
            if upload in named or not started.isdigit() or now - int(started) < older_than_seconds:
                continue
            logger.info("removing upload %s of model %s: no manifest names it (a push that died)", upload, name)
            self.fs.rm(item["name"], recursive=True)
            removed.append(upload)
        return removed


def _storage_options(protocol: str, settings: StoreSettings | None) -> dict[str, Any]:
    """The fsspec filesystem's options: no listing cache (every poll lists again); S3's endpoint, region, keys."""
    options: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    if protocol == "file":
        return {"skip_instance_cache": True}
    if protocol != "s3" or settings is None:
        return options
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_region:
        options["client_kwargs"] = {"region_name": settings.s3_region}
    if (settings.s3_access_key_id is None) != (settings.s3_secret_access_key is None):
        raise StoreError("give both s3-access-key-id and s3-secret-access-key, or neither (AWS's credential chain)")
    if settings.s3_access_key_id is not None and settings.s3_secret_access_key is not None:
        options["key"] = settings.s3_access_key_id.get_secret_value()
        options["secret"] = settings.s3_secret_access_key.get_secret_value()
    # Fail within seconds when the store is down: the poll tries again, a push answers 503.
    options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}
    return options


def _describe(error: BaseException) -> str:
    """The error's class and message, on one line."""
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text}"


class RepositoryFollower:
    """One replica's cache of a shared repository, kept in line with it, and the pushes and deletes made through it.

    Args:
        store: the shared repository.
        repository: the model repository over the cache folder (its ``root``).
        metrics: where staleness, the last successful poll and the bytes downloaded are published.
    """

    def __init__(self, store: RepositoryStore, repository: ModelRepository, metrics: Metrics) -> None:
        self.store = store
        self.repository = repository
        self.metrics = metrics
        self.cache = repository.root
        self._lock = asyncio.Lock()
        self._stale_since: float | None = None
        # (model, version, manifest tag) of downloads refused (a digest mismatch): not tried again until the
        # manifest changes, so that a damaged version costs one download and one log line, not one per poll.
        self._refused: set[tuple[str, int, str]] = set()
        self._state = self._read_state()

    # -- the cache's record of what it holds: {"configs": {"m/config.yaml": tag}, "versions": {"m/3": tag}}

    def _read_state(self) -> dict[str, dict[str, str]]:
        path = self.cache / CACHE_STATE_FILE
        try:
            state = json.loads(path.read_text())
            return {"configs": dict(state["configs"]), "versions": dict(state["versions"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {"configs": {}, "versions": {}}

    def _write_state(self) -> None:
        path = self.cache / CACHE_STATE_FILE
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        partial.write_text(json.dumps(self._state, indent=1, sort_keys=True))
        os.replace(partial, path)

    def _staging(self) -> Path:
        root = self.cache / STAGING_FOLDER
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=root, prefix="download-"))

    def _remove(self, path: Path) -> None:
        """Take ``path`` out of the cache in one rename, then delete it."""
        if not path.exists():
            return
        away = self._staging()
        os.rename(path, away / "removed")
        shutil.rmtree(away, ignore_errors=True)

    def prepare_cache(self) -> None:
        """Create the cache folder and remove downloads left by a process that stopped mid-way."""
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = self.cache / STAGING_FOLDER
        if staging.is_dir():
            for entry in staging.glob("download-*"):
                shutil.rmtree(entry, ignore_errors=True)

    async def sync(self, load: bool = True) -> bool:
        """Bring the cache in line with the store, then (with ``load``) the loaded models in line with the cache.

        A store that cannot be reached leaves the cache and the loaded models as they are: the
        failure is logged once, ``gateway_repository_stale`` turns 1 until a poll succeeds again.

        Returns:
            Whether the store could be polled.
        """
        try:
            async with self._lock:
                listing = await asyncio.to_thread(self.store.list_models)
                served = {name: self.repository.ready_versions(name) for name in listing}
                downloaded = await asyncio.to_thread(self._sync_files, listing, served)
        except Exception as error:
            failure = self.store.error("cannot poll", error) if not isinstance(error, StoreError) else error
            if self._stale_since is None:
                self._stale_since = time.time()
                logger.warning("%s; serving the models this replica has until it is back", failure)
            self.metrics.repository_stale.set(1)
            return False
        if self._stale_since is not None:
            logger.info(
                "the model repository %s can be polled again (after %.0f s)",
                self.store.uri,
                time.time() - self._stale_since,
            )
            self._stale_since = None
        self.metrics.repository_stale.set(0)
        self.metrics.repository_last_sync.set(time.time())
        if downloaded:
            self.metrics.repository_downloaded_bytes.inc(downloaded)
        if load:
            await self.repository.poll()
        return True

    def _sync_files(self, listing: dict[str, ModelListing], served: dict[str, list[int]]) -> int:
        """Runs in a worker thread: download what the cache lacks, remove what the store no longer holds.

        Returns:
            The bytes downloaded.
        """
        downloaded = 0
        changed = False
        for name, model in listing.items():
            model_dir = self.cache / name
            changed = self._sync_configs(name, model) or changed
            selected = set(_selected_versions(model_dir, sorted(model.versions)))
            for version in sorted(selected):
                key, tag = f"{name}/{version}", model.versions[version]
                cached = self._state["versions"].get(key) == tag and (model_dir / str(version)).is_dir()
                if cached or (name, version, tag) in self._refused:
                    continue
                try:
                    downloaded += self._download(name, version, tag)
                except FileNotFoundError:  # deleted since the listing
                    continue
                except StoreError as error:
                    logger.error("%s", error)
                    self._refused.add((name, version, tag))
                    continue
                changed = True
            keep = selected | (set(served.get(name, ())) & set(model.versions))
            if any(not (model_dir / str(version)).is_dir() for version in selected):
                # A selected version could not be downloaded (refused, or gone meanwhile): the cached versions
                # still in the store stay, so that what served until now (or after a restart) keeps serving.
                keep |= {version for version in model.versions if (model_dir / str(version)).is_dir()}
            for version_dir in model_dir.iterdir():
                if version_dir.name.isdigit() and int(version_dir.name) not in keep:
                    self._remove(version_dir)
                    self._state["versions"].pop(f"{name}/{version_dir.name}", None)
                    changed = True
        for entry in self.cache.iterdir():
            if entry.is_dir() and valid_model_name(entry.name) and entry.name not in listing:
                logger.info("model %s is no longer in %s; removing it from the cache", entry.name, self.store.uri)
                self._remove(entry)
                for kind in ("configs", "versions"):
                    self._state[kind] = {
                        k: v for k, v in self._state[kind].items() if not k.startswith(f"{entry.name}/")
                    }
                changed = True
        if changed:
            self._write_state()
        return downloaded

    def _sync_configs(self, name: str, model: ModelListing) -> bool:
        """Blocking: copy model ``name``'s config files into the cache when they changed; whether any did."""
        model_dir = self.cache / name
        model_dir.mkdir(exist_ok=True)
        changed = False
        for file_name in CONFIG_FILES:
            key, tag = f"{name}/{file_name}", model.configs.get(file_name)
            if tag is None and key in self._state["configs"]:
                (model_dir / file_name).unlink(missing_ok=True)
                del self._state["configs"][key]
                changed = True
            elif tag is not None and self._state["configs"].get(key) != tag:
                try:
                    self.store.download_file(name, file_name, model_dir / file_name)
                except FileNotFoundError:  # removed since the listing: the next poll sees it gone
                    continue
                self._state["configs"][key] = tag
                changed = True
        return changed

    async def fetch_model_config(self, name: str) -> None:
        """Copy model ``name``'s config file from the store into the cache (what a push checks its files with).

        Raises:
            UnavailableError: the store cannot be reached.
        """

        def fetch() -> None:
            if self._sync_configs(name, self.store.model_listing(name)):
                self._write_state()

        async with self._lock:
            try:
                await asyncio.to_thread(fetch)
            except Exception as error:
                raise UnavailableError(str(self.store.error("cannot read", error))) from None

    async def publish_file(self, name: str, file_name: str) -> None:
        """Write model ``name``'s file ``file_name`` (its traffic policy) from the cache to the store, where
        the other replicas take it at their next poll.

        Raises:
            UnavailableError: the store cannot be written. The change stays on this replica only until
                its next successful poll, which takes the store's file again.
        """
        key = f"{name}/{file_name}"

        def publish() -> None:
            try:
                self._state["configs"][key] = self.store.upload_file(name, file_name, self.cache / name / file_name)
            except Exception:
                self._state["configs"][key] = _UNPUBLISHED
                raise
            finally:
                self._write_state()

        async with self._lock:
            try:
                await asyncio.to_thread(publish)
            except Exception as error:
                raise UnavailableError(
                    f"{self.store.error('cannot write', error)}; the change holds on this replica only until "
                    "its next poll"
                ) from None

    def _download(self, name: str, version: int, tag: str) -> int:
        """Download one version into a staging folder, check it, and move it into the cache in one rename."""
        staging = self._staging()
        try:
            files = staging / "version"
            size = self.store.download_version(name, version, files)
            target = self.cache / name / str(version)
            self._remove(target)  # a version deleted and pushed again under the same number
            os.rename(files, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._state["versions"][f"{name}/{version}"] = tag
        logger.info("model %s version %d downloaded from %s (%d bytes)", name, version, self.store.uri, size)
        return size

    async def install_version(self, name: str, version: int | None, staged: Path) -> int:
        """Check a staged version, commit it to the store, put it into this replica's cache and load it.

        The other replicas load it at their next poll. See
        :meth:`~gateway.repository.model_repository.ModelRepository.install_version` for the checks.

        Args:
            name: the model name.
            version: the version number, or None for the next free one in the store.
            staged: a folder inside the cache's staging area holding the version's files.

        Returns:
            The version number committed.

        Raises:
            InvalidArgumentError: an invalid model name, or the files do not load.
            AlreadyExistsError: that version exists in the store already.
            UnavailableError: the store cannot be reached or written (nothing is committed), or the version
                was committed but failed to load here.
        """
        await asyncio.to_thread(self.repository.check_staged_version, name, staged)
        async with self._lock:
            try:
                number, tag = await asyncio.to_thread(self.store.commit_version, name, version, staged)
            except StoreError as error:
                raise UnavailableError(str(error)) from None
            model_dir = self.cache / name
            model_dir.mkdir(exist_ok=True)
            await asyncio.to_thread(self._remove, model_dir / str(number))
            await asyncio.to_thread(os.rename, staged, model_dir / str(number))
            self._state["versions"][f"{name}/{number}"] = tag
            await asyncio.to_thread(self._write_state)
            logger.info("model %s version %d committed to %s", name, number, self.store.uri)
            # Loaded under the lock: a poll in between could take the version out of the cache (a newer one,
            # pushed through another replica, is what the policy selects) while this load reads its files.
            try:
                await self.repository.load(name, self.repository.config_override(name))
            except UnavailableError:
                reason = self.repository.failure(name, number)
                if reason is not None:
                    raise UnavailableError(
                        f"model '{name}' version {number} was committed to {self.store.uri} but failed to load: "
                        f"{reason}"
                    ) from None
        return number

    async def delete(self, name: str, version: int | None) -> list[int]:
        """Delete a model, or one version, from the store (manifests first), then follow it in this replica.

        This replica's cache follows at once (:meth:`sync`): the version the policy selects next is
        downloaded before the deleted one leaves the cache, and a loaded model is loaded again, so
        the previous version takes over without a gap (as a delete in a local repository). The other
        replicas stop serving it at their next poll.

        Returns:
            The versions deleted, ascending.

        Raises:
            NotFoundError: no such model or version in the store.
            UnavailableError: the store cannot be reached or written.
        """
        async with self._lock:
            try:
                deleted = await asyncio.to_thread(self.store.delete, name, version)
            except StoreError as error:
                raise UnavailableError(str(error)) from None
        if not await self.sync(load=False):  # the store went away just after the delete: leave the cache now
            gone = {f"{name}/{number}" for number in deleted}
            for kind in ("configs", "versions"):
                self._state[kind] = {
                    key: tag
                    for key, tag in self._state[kind].items()
                    if key not in gone and not (version is None and key.startswith(f"{name}/"))
                }
            await asyncio.to_thread(self._write_state)
            with contextlib.suppress(NotFoundError):
                await self.repository.delete(name, version)
        elif version is None:
            with contextlib.suppress(NotFoundError):
                await self.repository.unload(name)  # its folder is gone from the cache: forgotten
        elif self.repository.is_loaded(name):
            with contextlib.suppress(NotFoundError, UnavailableError):  # a failure is in the index, and logged
                await self.repository.load(name, self.repository.config_override(name))
        return deleted


def _selected_versions(model_dir: Path, available: list[int]) -> list[int]:
    """The versions the model's version policy (its config in the cache) selects among ``available``."""
    try:
        config = read_config(model_dir)
    except ModelConfigError:
        config = ModelConfig()
    return config.version_policy.select(available)
