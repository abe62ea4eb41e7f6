"""Repository control: the repository index, and the management API (load, unload, upload, delete).

Semantics follow the KServe v2 model repository extension and Triton's (index, load, unload), plus
our extensions: upload, delete, one model's versions on disk, and a check of the admin token. Load,
unload, upload, delete and the token check need the admin token; the index and a model's versions
are open.

In a worker process (``gateway serve --workers N``) a management request reaches one worker, which
does it and then has every other worker follow through the :class:`Peers` it was given at
construction, so that the next request finds the change wherever it lands. The process layer
provides that link (:class:`gateway.process.peers.PeerWorkers`); this module never imports it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, Protocol

from gateway.admin_token import AdminToken
from gateway.core.traffic_control import TrafficControl
from gateway.core.types import UploadResult
from gateway.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    NotSupportedError,
    UnavailableError,
)
from gateway.repository.model_repository import IndexEntry, ModelRepository, ModelState
from gateway.repository.names import check_model_name
from gateway.repository.packages import check_version_files, receive_package, unpack_package
from gateway.repository.store import RepositoryFollower
from gateway.repository.traffic import TRAFFIC_FILE
from gateway.settings import ModelControlMode

logger = logging.getLogger(__name__)

#: What another worker is asked to do with a model after a management request.
PeerAction = Literal["load", "unload"]


class Peers(Protocol):
    """The other worker processes serving the same repository, as repository control sees them."""

    async def follow(self, action: PeerAction, name: str, config_override: str | None = None) -> None:
        """Have every other worker load (or unload) model ``name`` from the repository; return once all have.

        ``config_override`` is the config a load takes instead of the model's config file (see
        :meth:`ModelRepository.load`).

        Raises:
            UnavailableError: some worker failed (the message says why), or they cannot be reached.
        """


class RepositoryControl:
    """The repository index and the management API over one model repository.

    Args:
        repository: the model repository.
        control_mode: the model control mode; load and unload requests need ``explicit``.
        admin_token: the token the management API (upload, load, unload, delete) requires.
        max_upload_bytes: largest model package accepted, compressed and unpacked alike, in bytes.
        peers: in a worker process, the other workers, which follow every load, unload, upload,
            delete and traffic policy change; None in a single process.
        follower: for a repository shared by several replicas (object storage, a shared folder), this
            replica's cache of it: uploads are committed to the store and deletes made there, and
            the other replicas follow at their next poll; None for a local repository.

    Attributes:
        traffic: the traffic management API (policy, promote, rollback) over the same repository.
    """

    def __init__(
        self,
        repository: ModelRepository,
        control_mode: ModelControlMode,
        admin_token: AdminToken,
        max_upload_bytes: int,
        peers: Peers | None = None,
        follower: RepositoryFollower | None = None,
    ) -> None:
        self.repository = repository
        self._follower = follower
        self.control_mode = control_mode
        self.admin_token = admin_token
        self.max_upload_bytes = max_upload_bytes
        self._peers = peers
        spread = self._spread_traffic_policy if peers is not None or follower is not None else None
        self.traffic = TrafficControl(repository, admin_token, spread)

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model in the repository with its state and, when not ready, the reason (one entry per version)."""
        entries = self.repository.index()
        return [entry for entry in entries if entry.state is ModelState.READY] if ready_only else entries

    def model_index(self, name: str) -> list[IndexEntry]:
        """One model's versions: its index entries, and every version folder on disk with its state.

        Our extension (``GET /v2/repository/models/{m}``); see :meth:`ModelRepository.model_index`.

        Raises:
            NotFoundError: no such model.
        """
        return self.repository.model_index(name)

    def version_status(self, name: str, model_version: str | None = None) -> list[IndexEntry]:
        """The state of each version of ``name`` in the index, or of ``model_version`` alone (TF Serving's status).

        Raises:
            UnavailableError: the model is loading and lists no version yet.
            NotFoundError: the model, or that version, is not in the index (the message gives the reasons the
                index gives, e.g. a failed load).
        """
        entries = [entry for entry in self.repository.index() if entry.name == name]
        versions = [entry for entry in entries if entry.version and model_version in (None, entry.version)]
        if not versions:
            if any(entry.state is ModelState.LOADING for entry in entries):
                raise UnavailableError(f"model '{name}' is loading")
            reasons = "; ".join(entry.reason for entry in entries if entry.reason)
            which = f"version {model_version} of model" if model_version is not None else "any version of model"
            raise NotFoundError(f"could not find {which} '{name}'" + (f": {reasons}" if reasons else ""))
        return versions

    def check_token(self, authorization: str | None) -> None:
        """Accept a valid admin token and do nothing else: a cheap check for clients (``gateway push``).

        Raises:
            UnauthenticatedError: no valid admin token.
        """
        self.admin_token.check(authorization)

    async def load_model(
        self, name: str, authorization: str | None, parameters: Mapping[str, Any] | None = None
    ) -> None:
        """Load or reload a model (explicit model control mode only).

        Args:
            authorization: the request's ``Authorization`` header or metadata value.
            parameters: the load request's parameters (Triton's): ``config``, the model's
                configuration as Triton's ModelConfig JSON, replaces the model's config file for
                this load (and the reloads that follow, until the next load request).

        Raises:
            UnauthenticatedError: no valid admin token.
            FailedPreconditionError: the server is not in explicit mode.
            InvalidArgumentError: an unknown parameter, or a config that is not JSON text of a
                config the gateway can serve.
            NotSupportedError: model files sent with the request (Triton's ``file:`` parameters).
            NotFoundError: no such model folder.
            UnavailableError: the load failed, here or in another worker process (``--workers``); the
                message says why.
        """
        self.admin_token.check(authorization)
        self._require_explicit_mode("load")
        config_override = _config_override(parameters or {})
        try:
            await self.repository.load(name, config_override)
        finally:
            await self._tell_peers("load", name)

    async def unload_model(self, name: str, authorization: str | None) -> None:
        """Unload a model (explicit model control mode only).

        Raises:
            UnauthenticatedError: no valid admin token.
            FailedPreconditionError: the server is not in explicit mode.
            NotFoundError: the model is not loaded.
            UnavailableError: another worker process failed to unload it (``--workers``).
        """
        self.admin_token.check(authorization)
        self._require_explicit_mode("unload")
        await self.repository.unload(name)
        await self._tell_peers("unload", name)

    async def delete(self, name: str, version: str | None, authorization: str | None) -> list[int]:
        """Delete a model, or one of its versions: stop serving it, remove its files (:meth:`ModelRepository.delete`).

        Our extension, allowed in every model control mode. With ``--workers``, the other workers
        unload a deleted model, or load the model again after one of its versions is deleted (when
        it is loaded), before the answer goes out.

        Args:
            name: the model name.
            version: a positive integer as text, or None for the whole model.
            authorization: the request's ``Authorization`` header value.

        Returns:
            The version folders deleted, ascending.

        Raises:
            UnauthenticatedError: no valid admin token.
            InvalidArgumentError: the version is not a positive integer.
            NotFoundError: no such model, or no such version on disk.
            UnavailableError: the repository cannot be written, or another worker failed to follow.
        """
        self.admin_token.check(authorization)
        number = None if version is None else _parse_version_number(version)
        if self._follower is not None:
            return await self._follower.delete(name, number)
        deleted = await self.repository.delete(name, number)
        if number is None:
            await self._tell_peers("unload", name)
        elif self.repository.is_loaded(name):
            await self._tell_peers("load", name)
        return deleted

    async def upload_version(
        self, name: str, version: str | None, package: AsyncIterator[bytes], authorization: str | None
    ) -> UploadResult:
        """Receive a model package, check it in a staging folder, install it as a new version and load it.

        Our extension beside the repository API, allowed in every model control mode. The package
        is a tar archive (gzip or not) of one version folder's files (see
        :mod:`gateway.repository.packages`). Nothing reaches the model's folder until the package
        unpacked safely, every ``.onnx`` passed ``onnx.checker`` and the files loaded on their own; if
        anything fails the repository is as it was and the versions already served keep serving.

        Args:
            name: the model name.
            version: a positive integer as text, or None for one more than the highest version on disk.
            package: the request body, in chunks.
            authorization: the request's ``Authorization`` header value.

        Raises:
            UnauthenticatedError: no valid admin token (checked before the body is read).
            InvalidArgumentError: a bad name, version or package (the message says which member or file).
            PayloadTooLargeError: the package, or what it unpacks to, passes the upload limit.
            AlreadyExistsError: the version exists already (in a shared repository: another replica
                committed it first).
            UnavailableError: the repository cannot be written (a shared repository: cannot be reached),
                or the model failed to load the version.
        """
        self.admin_token.check(authorization)
        check_model_name(name)  # before reading the body
        number = None if version is None else _parse_version_number(version)
        async with self.repository.staging_folder() as staging:
            archive = staging / "package"
            await receive_package(package, archive, self.max_upload_bytes)
            version_dir = staging / "version"
            await asyncio.to_thread(unpack_package, archive, version_dir, self.max_upload_bytes)
            await asyncio.to_thread(check_version_files, version_dir, self.max_upload_bytes)
            install = self._follower.install_version if self._follower is not None else self.repository.install_version
            installed = await install(name, number, version_dir)
        await self._tell_peers("load", name)
        logger.info("model %s version %d uploaded", name, installed)
        return UploadResult(name, installed, installed in self.repository.ready_versions(name))

    async def _spread_traffic_policy(self, name: str) -> None:
        """After ``name``'s traffic policy changed here: the other workers load the model again (the policy
        is read again; its versions stay loaded), and in a shared repository its ``traffic.json`` is
        written to the store, where the other replicas take it at their next poll.

        Raises:
            UnavailableError: some other worker failed, or the store cannot be written.
        """
        if self._follower is not None:
            await self._follower.publish_file(name, TRAFFIC_FILE)
        await self._tell_peers("load", name)

    async def _tell_peers(self, action: PeerAction, name: str) -> None:
        """In a worker process, have the other workers load (with this worker's config override) or unload ``name``.

        Raises:
            UnavailableError: some other worker failed.
        """
        if self._peers is not None:
            await self._peers.follow(action, name, self.repository.config_override(name) if action == "load" else None)

    def _require_explicit_mode(self, action: str) -> None:
        if self.control_mode is not ModelControlMode.EXPLICIT:
            raise FailedPreconditionError(
                f"cannot {action} models in model control mode '{self.control_mode}'; "
                "start the server with --model-control-mode explicit"
            )


def _config_override(parameters: Mapping[str, Any]) -> str | None:
    """The ``config`` parameter of a load request (Triton's ModelConfig JSON), or None.

    Raises:
        InvalidArgumentError: an unknown parameter, or a config that is neither JSON text nor a JSON object.
        NotSupportedError: a ``file:`` parameter (model files sent with the request).
    """
    files = sorted(key for key in parameters if key.startswith("file:"))
    if files:
        raise NotSupportedError(
            f"loading model files sent with the request ({', '.join(files)}) is not supported; put the files "
            "into the model repository (or upload a version: PUT /v2/repository/models/<m>/versions/<v>)"
        )
    unknown = sorted(key for key in parameters if key != "config")
    if unknown:
        raise InvalidArgumentError(f"unknown load parameter {', '.join(unknown)}; a load takes 'config'")
    config = parameters.get("config")
    if config is None or isinstance(config, str):
        return config
    if isinstance(config, dict):
        return json.dumps(config)
    raise InvalidArgumentError("load parameter 'config' must be Triton's ModelConfig as JSON text")


def _parse_version_number(version: str) -> int:
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise InvalidArgumentError(f"model version '{version}' is not a positive integer")
    return int(version)
