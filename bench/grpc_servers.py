"""What the gRPC server itself costs per call: grpc.aio against grpcio's synchronous server.

Each server answers ``inference.GRPCInferenceService/ModelInfer`` with the same work: it parses the
request (a ``ModelInferRequest`` of one FP32 row of 64 values, raw contents) and returns a
pre-built ``ModelInferResponse`` (10 FP32 values). No model runs, so the figures are the servers'
own cost and the ceiling each would put on the gateway on one core:

- ``aio``: ``grpc.aio.server`` with an ``async def`` handler on its event loop (the gateway today);
- ``sync-N``: ``grpc.server`` with a thread pool of N threads and a plain handler;
- ``sync-N-bridge``: the same, the handler handing each call to an asyncio event loop in another
  thread and waiting for its answer (``asyncio.run_coroutine_threadsafe``): what the gateway's
  servicer, whose data plane is async, would pay on the synchronous server.

Each server runs in its own process pinned to ``--server-core``; h2load (nghttp2-client) pinned to
``--client-core`` sends the pre-serialized frame over one HTTP/2 connection with ``--concurrency``
streams for ``--seconds``. Output: calls/s, p50 and p99 per server, and the CPU seconds per call the
server process used (``/proc/<pid>/stat``: user + system).

    .venv/bin/python bench/grpc_servers.py [--seconds 5] [--concurrency 32]   # bash bench/run.sh installs h2load
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.serving import cpu_seconds, free_port, grpc_frame, pinned, run_h2load  # noqa: E402
from protos import inference as pb  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
KINDS = ("aio", "sync-1", "sync-4", "sync-16", "sync-4-bridge", "sync-16-bridge")


def answer() -> bytes:
    """The pre-built answer: one FP32 output of 10 values, raw."""
    response = pb.ModelInferResponse(model_name="small", model_version="1")
    response.outputs.add(name="output", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.zeros(10, np.float32).tobytes())
    return bytes(response.SerializeToString())


def serve(kind: str, port: int) -> None:
    """Run server ``kind`` on ``port`` until killed."""
    reply = answer()

    def parse(request: bytes) -> None:
        pb.ModelInferRequest.FromString(request)

    if kind == "aio":

        async def handle_async(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            parse(request)
            return reply

        async def main() -> None:
            server = grpc.aio.server()
            handler = grpc.unary_unary_rpc_method_handler(handle_async)
            server.add_generic_rpc_handlers([_Route(handler)])
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()

        asyncio.run(main())
        return

    threads = int(kind.split("-")[1])
    if kind.endswith("bridge"):
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        async def on_loop(request: bytes) -> bytes:
            parse(request)
            return reply

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            return asyncio.run_coroutine_threadsafe(on_loop(request), loop).result()
    else:

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            parse(request)
            return reply

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers([_Route(grpc.unary_unary_rpc_method_handler(handle))])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


class _Route(grpc.GenericRpcHandler):
    """Routes ModelInfer to one handler (bytes in, bytes out: no (de)serializer)."""

    def __init__(self, handler: grpc.RpcMethodHandler) -> None:
        self._handler = handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handler if handler_call_details.method == METHOD else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    folder = Path(tempfile.mkdtemp(prefix="grpc-servers-"))
    frame = folder / "request.grpc"
    frame.write_bytes(grpc_frame("small", 64))
    print(f"server          calls/s   p50 ms   p99 ms  CPU us/call   (c={args.concurrency}, one core each)")
    for kind in KINDS:
        port = free_port()
        command = [*pinned(args.server_core), sys.executable, __file__, "--serve", kind, "--port", str(port)]
        process = subprocess.Popen(command)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
            before = cpu_seconds(Path(f"/proc/{process.pid}/stat"))
            started = time.monotonic()
            figure = run_h2load(args.client_core, f"127.0.0.1:{port}", frame, args.concurrency, args.seconds, folder)
            used = cpu_seconds(Path(f"/proc/{process.pid}/stat")) - before
            calls = figure.requests_per_second * (args.seconds + 1)  # h2load's warm-up second is as busy
            elapsed = time.monotonic() - started
            per_call = used / calls * 1e6 if calls else float("nan")
            p50 = figure.p50 * 1e3 if figure.p50 is not None else float("nan")
            p99 = figure.p99 * 1e3 if figure.p99 is not None else float("nan")
            status = f"  FAILED: {figure.failed}" if figure.failed else ""
            print(
                f"{kind:14} {figure.requests_per_second:8.0f} {p50:8.3f} {p99:8.3f} {per_call:12.0f}"
                f"   ({elapsed:.1f} s measured){status}"
            )
        finally:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
