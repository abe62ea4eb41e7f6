"""Serving benchmark: the gateway over REST JSON, REST binary and gRPC against ONNX Runtime in process.

One run measures, for a small MLP (64-128-10) and a large one (1024 wide, 4 hidden layers), batch 1
per request:

- the limit: ONNX Runtime called in this process on the server's core (latency of one call, calls/s
  at batch 1, items/s at batch 32), with the thread budget the server gives the model;
- the gateway at concurrency 1 and 32 over REST JSON and REST binary (wrk, Debian's package) and
  gRPC (h2load from nghttp2-client, sending a pre-serialized ``ModelInferRequest`` frame).

The server runs pinned to one core and the load generator to another (``taskset``). A second table
then measures what worker processes add at concurrency 32: the gateway with ``--workers 1`` and
``--workers 2``, server and load generator on every core (not pinned: on this 2-core machine two
workers cannot have cores of their own apart from the load generator's). A run with any
failed request reports FAILED instead of a figure: wrk and h2load count non-2xx answers, and the
gateway's own ``gateway_inference_requests_total`` must count no failure for the model (gRPC errors
travel in trailers, which h2load does not read). Output: a table of req/s, p50 and p99 latency and
each figure's ratio to the limit, then the issue's targets, met or missed.

Usage (``bash bench/run.sh`` installs what it needs first)::

    .venv/bin/python bench/serving.py [--seconds 5] [--server-core 0] [--client-core 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import LARGE_MLP, SMALL_MLP, write_mlp  # noqa: E402
from protos import inference as pb  # noqa: E402

MODELS = {"small": SMALL_MLP, "large": LARGE_MLP}
#: The large MLP batches dynamically; the small one runs each request at once (it takes microseconds).
CONFIGS = {
    "small": "max_batch_size: 32\n",
    "large": "max_batch_size: 32\n"
    "dynamic_batching:\n  max_queue_delay_microseconds: 500\n  preferred_batch_size: [32]\n",
}
CONCURRENCIES = (1, 32)
PATHS = ("REST JSON", "REST binary", "gRPC")
#: The second table: worker process counts, and the (model, path) rows measured at concurrency 32.
WORKER_COUNTS = (1, 2)
WORKER_PATHS = (("small", "REST binary"), ("small", "gRPC"), ("large", "REST binary"))

WRK_SCRIPT = """
wrk.method = "POST"
local file = io.open("{body}", "rb")
wrk.body = file:read("*a")
file:close()
{headers}
done = function(summary, latency, requests)
  io.write(string.format(
    'RESULT {{"requests": %d, "seconds": %f, "status_errors": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Figure:
    """One measured row: requests/s, items/s, and latency percentiles in seconds (None if not measured)."""

    requests_per_second: float
    items_per_second: float
    p50: float | None
    p99: float | None
    failed: str | None = None


def limit(model_file: Path, width: int, seconds: float) -> tuple[Figure, Figure]:
    """ONNX Runtime in this process, one thread: batch 1 (latency, calls/s) and batch 32 (items/s)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    one, batched = session_figures(session, width, (1, 32), seconds / 2)
    return one, batched


def session_figures(
    session: ort.InferenceSession, width: int, batches: tuple[int, ...], seconds: float, warmup_runs: int = 50
) -> list[Figure]:
    """An MLP session (``input`` FP32 [batch, width] -> ``output``) called back to back at each batch size for
    ``seconds`` after ``warmup_runs`` calls: per batch size, calls/s, items/s, p50 and p99 of one call."""
    rng = np.random.default_rng(0)
    figures = []
    for batch in batches:
        x = rng.random((batch, width), dtype=np.float32)
        for _ in range(warmup_runs):
            session.run(["output"], {"input": x})
        durations = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            session.run(["output"], {"input": x})
            durations.append(time.perf_counter() - started)
        calls = len(durations) / sum(durations)
        durations.sort()
        figures.append(
            Figure(calls, calls * batch, durations[len(durations) // 2], durations[int(len(durations) * 0.99)])
        )
    return figures


def write_bodies(folder: Path, width: int) -> dict[str, tuple[Path, dict[str, str]]]:
    """Per REST path: the file holding a request body for one row, and the body's headers."""
    x = np.random.default_rng(1).random((1, width), dtype=np.float32)
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, width]}
    bodies: dict[str, tuple[Path, dict[str, str]]] = {}
    json_body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    for path, body, headers in (
        ("REST JSON", json_body, {"Content-Type": "application/json"}),
        ("REST binary", header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}),
    ):
        file = folder / f"{path.replace(' ', '_')}.body"
        file.write_bytes(body)
        bodies[path] = (file, headers)
    return bodies


def grpc_frame(model: str, width: int) -> bytes:
    """One gRPC message frame (uncompressed flag, big-endian length, protobuf) asking ``model`` for one row."""
    x = np.random.default_rng(1).random((1, width), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(x.tobytes())
    message = request.SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def failures(http: httpx.Client, model: str) -> tuple[float, float]:
    """The gateway's counts of successful and failed inference requests for ``model``.

    Requests the client cancelled are not failures: wrk and h2load drop their connections with
    requests in flight when a run's time is up.
    """
    success = failed = 0.0
    for line in http.get("/metrics").text.splitlines():
        if 'status="Cancelled"' in line:
            continue
        if line.startswith("gateway_inference_requests_total{") and f'model="{model}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if 'status="success"' in line:
                success += value
            else:
                failed += value
    return success, failed


def cpu_seconds(stat_file: Path) -> float:
    """User + system CPU seconds from a ``/proc`` stat file: ``/proc/<pid>/stat`` for a process (all its
    threads), ``/proc/<pid>/task/<tid>/stat`` for one thread.

    Raises:
        OSError: the process or thread is gone.
    """
    fields = stat_file.read_text().rsplit(")", 1)[1].split()  # the fields after the command name
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(core: int | None) -> list[str]:
    """The ``taskset`` prefix that pins a command to ``core``; none for None (every core)."""
    return [] if core is None else ["taskset", "-c", str(core)]


def run_wrk(
    core: int | None, url: str, body: Path, headers: dict[str, str], concurrency: int, seconds: int, folder: Path
) -> Figure:
    script = folder / "request.lua"
    script.write_text(
        WRK_SCRIPT.format(
            body=body, headers="\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())
        )
    )
    command = [*pinned(core), "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    rate = result["requests"] / result["seconds"]
    errors = result["status_errors"] + result["socket_errors"]
    return Figure(
        rate,
        rate,
        result["p50_us"] / 1e6,
        result["p99_us"] / 1e6,
        failed=f"{errors} failed requests" if errors else None,
    )


def run_h2load(
    core: int | None, address: str, frame: Path, concurrency: int, seconds: int, folder: Path, connections: int = 1
) -> Figure:
    """h2load: ``connections`` HTTP/2 connections, ``concurrency`` streams in all (as gRPC channels multiplex calls)."""
    log = folder / "h2load.log"
    log.unlink(missing_ok=True)
    command = [
        *pinned(core), "h2load", f"-c{connections}", f"-m{concurrency // connections}", f"-D{seconds}",
        "--warm-up-time=1",
        "-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers", f"--log-file={log}",
        f"http://{address}/inference.GRPCInferenceService/ModelInfer",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", output
    )
    if match is None:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    bad_status = sum(1 for row in rows if row[1] != "200")
    durations = sorted(int(row[2]) / 1e6 for row in rows)
    rate = len(rows) / seconds
    errors = int(match[4]) + int(match[5]) + bad_status
    return Figure(
        rate,
        rate,
        durations[len(durations) // 2],
        durations[int(len(durations) * 0.99)],
        failed=f"{errors} failed requests" if errors else None,
    )


@contextmanager
def gateway(
    repository: Path,
    core: int | None,
    http_port: int,
    grpc_port: int,
    workers: int = 1,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    launcher: list[str] | None = None,
) -> Iterator[tuple[httpx.Client, int]]:
    """A gateway serving ``repository`` (pinned to ``core``, unless None) until the block ends: its HTTP client and pid.

    ``extra_args`` are added to ``gateway serve``'s, ``env`` to its environment; ``launcher`` is the
    command that takes ``serve`` and its arguments (default: ``python -m gateway``).
    """
    log = repository.parent / "gateway.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *pinned(core), *(launcher or [sys.executable, "-m", "gateway"]), "serve",
                "--model-repository", str(repository), "--http-port", str(http_port),
                "--grpc-port", str(grpc_port), "--log-level", "warning", "--workers", str(workers), *extra_args,
            ],
            cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT,
            env={**os.environ, "GATEWAY_ADMIN_TOKEN": "benchmark", **(env or {})},
        )  # fmt: skip
        http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
        try:
            deadline = time.monotonic() + 60
            ready_in_a_row = 0  # each on a new connection: with several workers, each must be ready
            while ready_in_a_row < 10:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready").status_code == 200
                except httpx.TransportError:
                    ready = False
                ready_in_a_row = ready_in_a_row + 1 if ready else 0
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start:\n{log.read_text()}")
                time.sleep(0.01 if ready else 0.1)
            yield http, process.pid
        finally:
            http.close()
            process.terminate()
            process.wait(30)


def tools_installed(*tools: str) -> bool:
    """Whether every command of ``tools`` is on the PATH; the missing ones are named on stderr."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    for tool in missing:
        print(f"{tool} is not installed: run bash bench/run.sh, which installs it", file=sys.stderr)
    return not missing


def write_mlp_repository(repository: Path) -> None:
    """The small and large MLPs (:data:`MODELS`) with their configs (:data:`CONFIGS`) as a model repository."""
    for name, widths in MODELS.items():
        write_mlp(repository / name / "1" / "model.onnx", widths)
        (repository / name / "config.yaml").write_text(CONFIGS[name])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each load run in seconds (default 5)")
    parser.add_argument("--server-core", type=int, default=0, help="CPU core of the gateway and the limit")
    parser.add_argument("--client-core", type=int, default=1, help="CPU core of wrk and h2load")
    args = parser.parse_args()
    if not tools_installed("wrk", "h2load", "taskset"):
        return 2
    folder = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    repository = folder / "repository"
    write_mlp_repository(repository)

    os.sched_setaffinity(0, {args.server_core})
    limits = {
        name: limit(repository / name / "1" / "model.onnx", widths[0], args.seconds) for name, widths in MODELS.items()
    }
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    ports = free_port(), free_port()

    rows: dict[tuple[str, str, int], Figure] = {}
    with gateway(repository, args.server_core, *ports) as (http, _):
        for name in MODELS:
            for path in PATHS:
                for concurrency in CONCURRENCIES:
                    rows[(name, path, concurrency)] = measure(
                        http, folder, name, path, concurrency, args.seconds, args.client_core, ports
                    )
    worker_rows: dict[tuple[int, str, str], Figure] = {}
    for workers in WORKER_COUNTS:
        with gateway(repository, None, *ports, workers=workers) as (http, _):
            for name, path in WORKER_PATHS:
                worker_rows[(workers, name, path)] = measure(
                    http, folder, name, path, 32, args.seconds, None, ports, connections=8
                )
    print_table(limits, rows)
    print_worker_table(limits, worker_rows)
    print_targets(limits, rows)
    shutil.rmtree(folder, ignore_errors=True)
    return 1 if any(figure.failed for figure in [*rows.values(), *worker_rows.values()]) else 0


def measure(
    http: httpx.Client,
    folder: Path,
    name: str,
    path: str,
    concurrency: int,
    seconds: int,
    client_core: int | None,
    ports: tuple[int, int],
    connections: int = 1,
) -> Figure:
    """One load run against the gateway, checked for failures by the load generator and by the gateway."""
    width = MODELS[name][0]
    before = failures(http, name)
    if path == "gRPC":
        frame = folder / f"{name}.grpc"
        frame.write_bytes(grpc_frame(name, width))
        figure = run_h2load(client_core, f"127.0.0.1:{ports[1]}", frame, concurrency, seconds, folder, connections)
    else:
        body, headers = write_bodies(folder, width)[path]
        url = f"http://127.0.0.1:{ports[0]}/v2/models/{name}/infer"
        figure = run_wrk(client_core, url, body, headers, concurrency, seconds, folder)
    after = failures(http, name)
    if after[1] > before[1] and figure.failed is None:
        figure.failed = f"the gateway counted {after[1] - before[1]:.0f} failed requests"
    if after[0] == before[0] and figure.failed is None:
        figure.failed = "the gateway counted no successful request"
    print(f"  measured {name} {path} c={concurrency}", file=sys.stderr)
    return figure


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def print_table(limits: dict[str, tuple[Figure, Figure]], rows: dict[tuple[str, str, int], Figure]) -> None:
    print(f"\n{'model':6} {'path':28} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  vs limit")
    for name in MODELS:
        single, batched = limits[name]
        print(f"{name:6} {'in process, batch 1':28} {1:>4} {single.requests_per_second:>9.0f} "
              f"{milliseconds(single.p50):>8} {milliseconds(single.p99):>8}  (the limit)")  # fmt: skip
        print(f"{name:6} {'in process, batch 32 (items/s)':28} {'':>4} {batched.items_per_second:>9.0f} "
              f"{'':>8} {'':>8}  (the batched limit)")  # fmt: skip
        for path in PATHS:
            for concurrency in CONCURRENCIES:
                figure = rows[(name, path, concurrency)]
                if figure.failed:
                    print(f"{name:6} {path:28} {concurrency:>4} FAILED: {figure.failed}")
                    continue
                if concurrency == 1:
                    versus = f"p50 +{milliseconds((figure.p50 or 0) - (single.p50 or 0))} ms over the limit"
                else:
                    reference = batched if name == "large" else single
                    versus = f"{figure.requests_per_second / reference.items_per_second:.0%} of the " + (
                        "batched limit" if name == "large" else "limit"
                    )
                print(f"{name:6} {path:28} {concurrency:>4} {figure.requests_per_second:>9.0f} "
                      f"{milliseconds(figure.p50):>8} {milliseconds(figure.p99):>8}  {versus}")  # fmt: skip


def print_worker_table(limits: dict[str, tuple[Figure, Figure]], rows: dict[tuple[int, str, str], Figure]) -> None:
    print("\nworker processes, concurrency 32 (gRPC: 8 connections of 4 streams); server and load generator unpinned")
    print(f"{'model':6} {'path':28} {'workers':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  vs limit")
    for (workers, name, path), figure in rows.items():
        if figure.failed:
            print(f"{name:6} {path:28} {workers:>7} FAILED: {figure.failed}")
            continue
        single, batched = limits[name]
        reference = batched if name == "large" else single
        print(f"{name:6} {path:28} {workers:>7} {figure.requests_per_second:>9.0f} "
              f"{milliseconds(figure.p50):>8} {milliseconds(figure.p99):>8}  "
              f"{figure.requests_per_second / reference.items_per_second:.0%} of the one-core "
              f"{'batched limit' if name == 'large' else 'limit'}")  # fmt: skip


#: The issue's targets: (model, path, concurrency, what is compared, bound). "p50 over limit" is
#: seconds over the in-process p50 at batch 1; "req/s" an absolute rate; "of batched limit" a share
#: of the in-process items/s at batch 32.
TARGETS = [
    ("small", "gRPC", 1, "p50 over limit", 0.15e-3),
    ("small", "REST JSON", 1, "p50 over limit", 0.2e-3),
    ("small", "REST binary", 1, "p50 over limit", 0.2e-3),
    ("small", "gRPC", 32, "req/s", 8000.0),
    ("small", "REST binary", 32, "req/s", 8000.0),
    *(("large", path, 32, "of batched limit", 0.7) for path in PATHS),
]


def print_targets(limits: dict[str, tuple[Figure, Figure]], rows: dict[tuple[str, str, int], Figure]) -> None:
    print("\ntargets")
    for name, path, concurrency, measure, bound in TARGETS:
        figure = rows[(name, path, concurrency)]
        single, batched = limits[name]
        if measure == "p50 over limit":
            met = (figure.p50 or 0) - (single.p50 or 0) <= bound
            description = f"p50 within {bound * 1e3:g} ms of the limit"
        elif measure == "req/s":
            met = figure.requests_per_second >= bound
            description = f">= {bound:.0f} req/s"
        else:
            met = figure.requests_per_second >= bound * batched.items_per_second
            description = f">= {bound:.0%} of the batched limit"
        verdict = "FAILED" if figure.failed else ("met" if met else "missed")
        print(f"  {verdict:7} {name}, c={concurrency}, {path}: {description}")


if __name__ == "__main__":
    sys.exit(main())
