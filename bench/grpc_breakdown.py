"""Where a gRPC call's CPU goes in the gateway: the gRPC server's part against ours (issue 16).

The gateway serves the small MLP (64-128-10) in one process pinned to ``--server-core``; h2load
(nghttp2-client) pinned to ``--client-core`` sends ``ModelInfer`` with raw contents over one HTTP/2
connection at concurrency 32 for ``--seconds``. Three runs of the same server:

- ``gateway``: as it serves;
- ``probe``: the same with ``InferenceServicer.ModelInfer`` wrapped to sum the CPU seconds of the
  event loop's thread (``time.thread_time()``) spent inside it; the small MLP runs inline, so the call
  never suspends and the sum is our handler's own CPU (decode, checks, metrics, the model, encode);
- ``constant``: ``ModelInfer`` replaced by one returning a pre-built answer: the gRPC server's cost in
  the gateway (its options, health service, the hop to the event loop) with none of ours.

The ``gateway`` server is also measured at concurrency 1 (calls/s, p50 and p99 latency).

For each: calls/s, and CPU microseconds per call of the whole process, of its event loop's thread,
and of its other threads (gRPC's poller and event-engine threads, and with the synchronous server its
pool's), from ``/proc/<pid>/task/*/stat``. Then the same ``ModelInfer`` called in a loop in this
process (parse and serialize included) for the handler's cost out of the server.

Usage (``bash bench/run.sh`` installs h2load; ``GATEWAY_GRPC_SERVER=threads`` measures the synchronous
server, README "The gRPC server")::

    .venv/bin/python bench/grpc_breakdown.py [--seconds 5]

The server runs through this file (``--serve MODE ...``), which installs the probe or the constant
answer and then runs ``gateway serve`` with the arguments that follow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.serving import (  # noqa: E402
    cpu_seconds,
    free_port,
    gateway,
    grpc_frame,
    run_h2load,
    tools_installed,
    write_mlp_repository,
)

MODES = ("gateway", "probe", "constant")
#: Where the probe writes its sums (JSON), twice a second.
PROBE_FILE_VARIABLE = "GATEWAY_BENCH_PROBE_FILE"


def serve(mode: str, gateway_arguments: list[str]) -> None:
    """Run ``gateway serve`` in this process with ``ModelInfer`` probed (``probe``) or replaced (``constant``)."""
    from gateway.cli import app
    from gateway.transports.grpc import servicer

    handler = servicer.InferenceServicer.ModelInfer
    if mode == "constant":
        import numpy as np

        from protos import inference as pb

        reply = pb.ModelInferResponse(model_name="small", model_version="1")
        reply.outputs.add(name="output", datatype="FP32", shape=[1, 10])
        reply.raw_output_contents.append(np.zeros(10, np.float32).tobytes())

        async def constant(self: Any, request: Any, context: Any) -> Any:
            return reply

        servicer.InferenceServicer.ModelInfer = constant  # type: ignore[method-assign]
    elif mode == "probe":
        sums = {"calls": 0, "cpu_seconds": 0.0}

        async def probed(self: Any, request: Any, context: Any) -> Any:
            started = time.thread_time()
            try:
                return await handler(self, request, context)
            finally:
                sums["cpu_seconds"] += time.thread_time() - started
                sums["calls"] += 1

        def write_sums() -> None:
            while True:
                time.sleep(0.5)
                Path(os.environ[PROBE_FILE_VARIABLE]).write_text(json.dumps(sums))

        servicer.InferenceServicer.ModelInfer = probed  # type: ignore[method-assign]
        threading.Thread(target=write_sums, daemon=True).start()
    sys.argv = ["gateway", *gateway_arguments]
    app()


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU seconds of each thread of ``pid``, by thread id (``main`` for the process's first)."""
    seconds = {}
    for thread in os.listdir(f"/proc/{pid}/task"):
        key = "main" if int(thread) == pid else thread
        with contextlib.suppress(OSError):  # the thread ended
            seconds[key] = cpu_seconds(Path(f"/proc/{pid}/task/{thread}/stat"))
    return seconds


def in_a_loop(repository: Path, calls: int) -> float:
    """CPU microseconds of one ``ModelInfer`` (parse, handler, serialize) called in a loop in this process."""
    from gateway.core.dataplane import DataPlane
    from gateway.metrics import Metrics
    from gateway.repository.model_repository import ModelRepository
    from gateway.transports.grpc.servicer import InferenceServicer
    from protos import inference as pb

    frame = grpc_frame("small", 64)[5:]  # the message, without the gRPC frame header

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

        def time_remaining(self) -> None:
            return None

        def set_trailing_metadata(self, metadata: object) -> None:
            pass

    async def run() -> float:
        models = ModelRepository(repository, 32, Metrics(), cpu_cores=1)
        await models.load_all()
        handler = InferenceServicer(DataPlane(models), None)  # type: ignore[arg-type]  # no repository RPCs

        async def call(count: int) -> None:
            for _ in range(count):
                answer = await handler.ModelInfer(pb.ModelInferRequest.FromString(frame), Context())  # type: ignore[arg-type]
                answer.SerializeToString()

        await call(calls // 10)  # warm up
        started = time.thread_time()
        await call(calls)
        return (time.thread_time() - started) / calls * 1e6

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each load run in seconds (default 5)")
    parser.add_argument("--server-core", type=int, default=0, help="CPU core of the gateway")
    parser.add_argument("--client-core", type=int, default=1, help="CPU core of h2load")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args, gateway_arguments = parser.parse_known_args()
    if args.serve:
        serve(args.serve, gateway_arguments)
        return 0
    if not tools_installed("h2load", "taskset"):
        return 2
    folder = Path(tempfile.mkdtemp(prefix="gateway-grpc-breakdown-"))
    repository = folder / "repository"
    write_mlp_repository(repository)
    frame = folder / "request.frame"
    frame.write_bytes(grpc_frame("small", 64))
    probe_file = folder / "probe.json"

    print(f"{'server':<10}{'calls/s':>9}{'CPU us/call':>13}{'main thread':>13}{'other threads':>15}{'ModelInfer':>12}")
    for mode in MODES:
        ports = free_port(), free_port()
        launcher = [sys.executable, __file__, "--serve", mode]
        env = {PROBE_FILE_VARIABLE: str(probe_file)}
        with gateway(repository, args.server_core, *ports, launcher=launcher, env=env) as (_, pid):
            before = thread_cpu_seconds(pid)
            no_calls = {"calls": 0, "cpu_seconds": 0.0}
            probed_before = json.loads(probe_file.read_text()) if probe_file.exists() else no_calls
            started = time.monotonic()
            figure = run_h2load(args.client_core, f"127.0.0.1:{ports[1]}", frame, 32, args.seconds, folder)
            elapsed = time.monotonic() - started  # h2load's warm-up second included, as in the CPU times
            after = thread_cpu_seconds(pid)
            time.sleep(0.6)
            probed = json.loads(probe_file.read_text()) if mode == "probe" else None
            if mode == "gateway":
                one_at_a_time = run_h2load(args.client_core, f"127.0.0.1:{ports[1]}", frame, 1, args.seconds, folder)
        if figure.failed:
            print(f"{mode:<10}  FAILED: {figure.failed}")
            continue
        calls = figure.requests_per_second * elapsed  # the rate held over the warm-up second too
        main_thread = after["main"] - before.get("main", 0.0)
        others = sum(seconds - before.get(thread, 0.0) for thread, seconds in after.items() if thread != "main")
        handler = ""
        if probed is not None:
            handler_calls = probed["calls"] - probed_before["calls"]
            handler = f"{(probed['cpu_seconds'] - probed_before['cpu_seconds']) / handler_calls * 1e6:.0f}"
        print(
            f"{mode:<10}{figure.requests_per_second:>9,.0f}{(main_thread + others) / calls * 1e6:>13.0f}"
            f"{main_thread / calls * 1e6:>13.0f}{others / calls * 1e6:>15.0f}{handler:>12}"
        )
    if one_at_a_time.failed:
        print(f"gateway at concurrency 1: FAILED: {one_at_a_time.failed}")
    else:
        assert one_at_a_time.p50 is not None and one_at_a_time.p99 is not None
        print(
            f"gateway at concurrency 1: {one_at_a_time.requests_per_second:,.0f} calls/s, "
            f"p50 {one_at_a_time.p50 * 1e3:.3f} ms, p99 {one_at_a_time.p99 * 1e3:.3f} ms"
        )
    os.sched_setaffinity(0, {args.server_core})
    print(f"ModelInfer in a loop in this process: {in_a_loop(repository, 20_000):.0f} us of CPU per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
