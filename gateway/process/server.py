"""One gateway process: REST (uvicorn) and gRPC (grpcio) answered on one event loop, over one core.

This is the one place that wires the layers together: the model repository, the core's data plane
and repository control, the transports, and (in a worker process) the link to the other workers.

Both servers listen before the models load, so liveness answers at once and readiness turns true
when the start-up load is done.

SIGTERM or SIGINT starts a graceful shutdown: readiness turns false at once (REST ready endpoint
and grpc.health), new inference requests get 503 / UNAVAILABLE while the listeners stay open, the
requests in flight get up to ``exit_timeout_seconds`` to finish, then both servers stop and the
process exits with status 0. Worker threads still busy then (a model run that never returns) are
abandoned rather than waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import grpc
import uvicorn

from gateway.admin_token import AdminToken, server_token
from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.core.shared_memory import SharedMemoryRegistry
from gateway.datatypes import RequestLimits
from gateway.logs import configure_logging
from gateway.metrics import Metrics
from gateway.process.loops import event_loop_factory
from gateway.process.messages import WORKER_START_FAILED
from gateway.process.peers import PeerWorkers
from gateway.process.runner_host import RunnerHost
from gateway.repository.model_repository import ModelRepository
from gateway.repository.store import RepositoryFollower, RepositoryStore, StoreError
from gateway.repository.tfserving_config import read_model_server_config
from gateway.settings import GatewaySettings, GrpcServerKind, MemoryBudgetScope, ModelControlMode
from gateway.transports.grpc.server import GrpcServer, create_grpc_server
from gateway.transports.rest.app import create_rest_app

logger = logging.getLogger(__name__)

#: Seconds the servers get to close their connections once nothing is in flight.
CLOSE_GRACE_SECONDS = 1.0


class StartupError(RuntimeError):
    """The server cannot start: a port cannot be bound, or the TLS files cannot be read."""


class _HttpServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: :func:`serve` owns SIGINT and SIGTERM.

    (uvicorn re-raises a captured signal once it has stopped, which would kill the process before
    the gRPC server is stopped.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run_gateway(settings: GatewaySettings, peers_connection: Connection | None = None) -> None:
    """Run :func:`serve` on uvloop (asyncio's own loop where uvloop is missing) until it returns.

    Args:
        settings: the server settings.
        peers_connection: in a worker process, its pipe to the supervisor (:mod:`gateway.process.supervisor`).

    Raises:
        StartupError: a port cannot be bound, the TLS files cannot be read, or the models.config not honoured.
    """
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        drained = runner.run(serve(settings, peers_connection))
    if not drained:
        logging.shutdown()
        os._exit(0)  # interpreter shutdown would wait for the model runs still going, without end


def run_worker(settings: GatewaySettings, connection: Connection) -> None:
    """A worker process's entry point (``--workers N``): one gateway on shared ports, linked to the supervisor.

    Handed to :func:`gateway.process.supervisor.run_supervisor`, which spawns a process running it.

    Args:
        settings: the server settings.
        connection: this worker's pipe to the supervisor.

    Exits with :data:`~gateway.process.messages.WORKER_START_FAILED` when the gateway cannot start.
    """
    configure_logging(settings.log_level, settings.log_format)
    try:
        run_gateway(settings, connection)
    except StartupError as error:
        logger.error("worker cannot start: %s", error)
        sys.exit(WORKER_START_FAILED)


async def serve(settings: GatewaySettings, peers_connection: Connection | None = None) -> bool:
    """Serve the model repository named in ``settings`` until SIGINT or SIGTERM, then drain and stop.

    A signal that arrives while the models are still loading stops the server once the load in
    progress has returned (a model load cannot be interrupted).

    Args:
        settings: the server settings.
        peers_connection: in a worker process, its pipe to the supervisor; the listening sockets
            are then shared with the other workers (SO_REUSEPORT).

    Returns:
        Whether every request in flight finished within the exit timeout.

    Raises:
        StartupError: a port cannot be bound, the TLS files cannot be read, or the models.config not honoured.
    """
    shared_ports = settings.workers > 1
    runners = (
        RunnerHost(peers_connection, asyncio.get_running_loop())
        if peers_connection is not None and settings.uses_model_runners
        else None
    )
    repository = _model_repository(settings, runners)
    follower = _repository_follower(settings, repository)
    given_token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    with server_token(given_token, settings.admin_token_dir, settings.http_port) as token:
        dataplane = DataPlane(
            repository,
            limits=RequestLimits.from_settings(settings),
            request_timeout_seconds=settings.request_timeout_seconds,
            # A region registered with one worker would be unknown to the others.
            shared_memory=SharedMemoryRegistry(enabled=not shared_ports),
        )
        peers = PeerWorkers(peers_connection, repository, runners) if peers_connection is not None else None
        control = RepositoryControl(
            repository,
            settings.model_control_mode,
            AdminToken(token),
            settings.max_upload_bytes,
            peers=peers,
            follower=follower,
        )
        if peers is not None:
            peers.start()
        try:
            grpc_server = create_grpc_server(
                dataplane,
                control,
                f"{settings.host}:{settings.grpc_port}",
                settings.max_request_bytes,
                settings.grpc_threads if settings.grpc_server is GrpcServerKind.THREADS else None,
                credentials=_grpc_credentials(settings),
                reuse_port=shared_ports,
            )
        except RuntimeError as error:
            raise StartupError(str(error)) from None
        http_server = _HttpServer(
            uvicorn.Config(
                create_rest_app(dataplane, control, settings.cors_allow_origins),
                log_level=settings.log_level,
                log_config=None,
                access_log=False,
                lifespan="off",
                ssl_certfile=settings.tls_cert_file,
                ssl_keyfile=settings.tls_key_file,
                timeout_graceful_shutdown=int(CLOSE_GRACE_SECONDS),
            )
        )
        try:
            http_server.config.load()  # reads the TLS files
        except (OSError, ssl.SSLError) as error:
            raise StartupError(f"cannot read the TLS certificate or key: {error}") from None
        http_socket = _listening_socket(settings.host, settings.http_port, reuse_port=shared_ports)
        await grpc_server.start()
        http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
        stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, _request_stop, stop_requested, signal_number)
        scheme = "https" if settings.tls_cert_file is not None else "http"
        logger.info(
            "serving %s on %s://%s:%d and grpc %s:%d (model control mode %s%s)",
            settings.model_repository,
            scheme,
            settings.host,
            settings.http_port,
            settings.host,
            settings.grpc_port,
            settings.model_control_mode,
            ", TLS" if scheme == "https" else "",
        )
        running = asyncio.create_task(_load_and_poll(settings, repository, follower, dataplane, grpc_server))
        stop_task = asyncio.create_task(stop_requested.wait())
        try:
            await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (running, stop_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            drained = await _drain(dataplane, grpc_server, settings.exit_timeout_seconds)
            http_server.should_exit = True
            await grpc_server.stop(CLOSE_GRACE_SECONDS)
            with contextlib.suppress(asyncio.CancelledError):
                await http_task
            dataplane.shared_memory.close()
            logger.info("server stopped")
    return drained


def _model_repository(settings: GatewaySettings, runners: RunnerHost | None) -> ModelRepository:
    """The model repository of ``settings``, with the models of its TF Serving models.config if it names one.

    With ``runners``, the versions run in model runner processes; else in this process, on this
    worker's share of the CPU cores.

    Raises:
        StartupError: the models.config cannot be read or honoured, or names a model the repository holds too.
    """
    try:
        configured = read_model_server_config(settings.model_config_file) if settings.model_config_file else {}
        return ModelRepository(
            settings.repository_folder,
            settings.default_max_batch_size,
            Metrics(),
            cpu_cores=max(1, len(os.sched_getaffinity(0)) // settings.workers),
            configured_models=configured,
            memory_budget_bytes=settings.worker_memory_budget_bytes,
            load_on_request=settings.model_load_on_request,
            host=runners,
            memory_budget_counts_process=settings.memory_budget_scope is MemoryBudgetScope.GATEWAY,
            gpu_memory_budget_bytes=settings.worker_gpu_memory_budget_bytes,
        )
    except ValueError as error:  # ModelServerConfigError, or a name both configured and in the repository
        raise StartupError(str(error)) from None


def _repository_follower(settings: GatewaySettings, repository: ModelRepository) -> RepositoryFollower | None:
    """For a shared model repository (a URI), this replica's follower of it over the repository's cache folder.

    Raises:
        StartupError: the shared repository cannot be reached or read (the message names its URI).
    """
    uri = settings.store_uri
    if uri is None:
        return None
    try:
        store = RepositoryStore(uri, settings)
        store.check()
    except StoreError as error:
        raise StartupError(str(error)) from None
    follower = RepositoryFollower(store, repository, repository.metrics)
    try:
        follower.prepare_cache()
    except OSError as error:
        raise StartupError(f"cannot use the repository cache folder {repository.root}: {error}") from None
    return follower


async def _load_and_poll(
    settings: GatewaySettings,
    repository: ModelRepository,
    follower: RepositoryFollower | None,
    dataplane: DataPlane,
    grpc_server: GrpcServer,
) -> None:
    """Load the repository and turn ready; in poll mode, then rescan the repository until cancelled.

    A shared repository is first copied into the cache (what its version policies select), and each
    poll follows it (:meth:`RepositoryFollower.sync`) before the cache is rescanned.
    """
    if follower is not None:
        await follower.sync(load=False)
    if settings.model_control_mode is not ModelControlMode.EXPLICIT and not settings.model_load_on_request:
        await repository.load_all()
    dataplane.mark_ready()
    await grpc_server.set_serving(True)
    logger.info("server ready")
    while settings.model_control_mode is ModelControlMode.POLL:
        await asyncio.sleep(settings.repository_poll_seconds)
        try:
            if follower is not None:
                await follower.sync()
            else:
                await repository.poll()
        except Exception:  # a scan that fails (e.g. a folder removed mid-scan) is retried next time
            logger.exception("repository poll failed")


async def _drain(dataplane: DataPlane, grpc_server: GrpcServer, exit_timeout_seconds: float) -> bool:
    """Turn not ready, refuse new inference requests, and wait up to the exit timeout for those in flight.

    Returns:
        Whether they all finished.
    """
    dataplane.start_draining()
    await grpc_server.set_serving(False)
    started = time.monotonic()
    if await dataplane.wait_idle(exit_timeout_seconds):
        logger.info("requests in flight finished in %.3f s", time.monotonic() - started)
        return True
    logger.warning("%d requests still in flight after %.1f s; stopping", dataplane.inflight, exit_timeout_seconds)
    return False


def _request_stop(stop_requested: asyncio.Event, signal_number: int) -> None:
    logger.info("received %s; draining, then stopping", signal.Signals(signal_number).name)
    stop_requested.set()


def _grpc_credentials(settings: GatewaySettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the certificate and key files, or None for plaintext.

    Raises:
        StartupError: a file cannot be read.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        key_pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    except OSError as error:
        raise StartupError(f"cannot read the TLS certificate or key: {error}") from None
    return grpc.ssl_server_credentials([key_pair])


def _listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket listening on ``host:port``, with SO_REUSEPORT when other workers share the port.

    Raises:
        StartupError: the address cannot be resolved or bound.
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, protocol)
    except OSError as error:
        raise StartupError(f"cannot bind the REST server to {host}:{port}: {error}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(address)
        listener.listen(2048)
        listener.set_inheritable(False)
    except OSError as error:
        listener.close()
        raise StartupError(f"cannot bind the REST server to {host}:{port}: {error}") from None
    return listener
