"""One gateway process: REST (uvicorn) and gRPC (grpc.aio) on one event loop, over one data plane.

Both servers listen before the models load, so liveness answers at once and readiness turns true
when the start-up load is done. SIGINT or SIGTERM stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from gateway.admin_token import AdminToken, generate_token, remove_token_file, token_file, write_token_file
from gateway.dataplane import DataPlane
from gateway.grpc_service import create_grpc_server, set_serving
from gateway.metrics import Metrics
from gateway.repository import ModelRepository
from gateway.rest import RestServer, create_app
from gateway.settings import GatewaySettings, ModelControlMode

logger = logging.getLogger(__name__)

#: Seconds that calls in flight get to finish when the server stops.
SHUTDOWN_GRACE_SECONDS = 5.0


class _HttpServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: :func:`serve` owns SIGINT and SIGTERM.

    (uvicorn re-raises a captured signal once it has stopped, which would kill the process before
    the gRPC server is stopped.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: GatewaySettings) -> None:
    """Serve the model repository named in ``settings`` until SIGINT or SIGTERM.

    Raises:
        RuntimeError: a port cannot be bound.
    """
    repository = ModelRepository(settings.model_repository, settings.default_max_batch_size, Metrics())
    generated_token_file: Path | None = None
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        token = settings.admin_token.get_secret_value()
    else:
        token = generate_token()
        generated_token_file = token_file(settings.admin_token_dir, settings.http_port)
        write_token_file(generated_token_file, token)
        logger.info("no --admin-token given: generated one, readable by this user in %s", generated_token_file)
    dataplane = DataPlane(repository, settings.model_control_mode, AdminToken(token), settings.max_upload_bytes)
    grpc_server, health_servicer = create_grpc_server(
        dataplane, f"{settings.host}:{settings.grpc_port}", settings.max_request_bytes
    )
    http_server = _HttpServer(
        uvicorn.Config(
            RestServer(dataplane, create_app(dataplane)),
            host=settings.host,
            port=settings.http_port,
            log_level=settings.log_level,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    await grpc_server.start()
    http_task = asyncio.create_task(http_server.serve())
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, _request_exit, http_server, signal_number)
    poll_task: asyncio.Task[None] | None = None
    try:
        logger.info(
            "serving %s on http://%s:%d and grpc %s:%d (model control mode %s)",
            settings.model_repository,
            settings.host,
            settings.http_port,
            settings.host,
            settings.grpc_port,
            settings.model_control_mode,
        )
        if settings.model_control_mode is not ModelControlMode.EXPLICIT:
            await repository.load_all()
        dataplane.is_ready = True
        await set_serving(health_servicer, True)
        logger.info("server ready")
        if settings.model_control_mode is ModelControlMode.POLL:
            poll_task = asyncio.create_task(_poll_forever(repository, settings.repository_poll_seconds))
        await http_task
    finally:
        dataplane.is_ready = False
        await set_serving(health_servicer, False)
        if poll_task is not None:
            poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll_task
        http_server.should_exit = True
        await grpc_server.stop(SHUTDOWN_GRACE_SECONDS)
        if generated_token_file is not None:
            remove_token_file(generated_token_file, token)
        logger.info("server stopped")


def _request_exit(http_server: uvicorn.Server, signal_number: int) -> None:
    logger.info("received %s; stopping", signal.Signals(signal_number).name)
    http_server.should_exit = True


async def _poll_forever(repository: ModelRepository, interval_seconds: float) -> None:
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await repository.poll()
        except Exception:  # a scan that fails (e.g. a folder removed mid-scan) is retried next time
            logger.exception("repository poll failed")
