"""Replicas benchmark: time from a push to "served by all three replicas", and the bytes each replica downloads.

Three ``gateway serve`` processes follow one shared model repository in poll mode: moto's S3 server
on loopback (``s3``, what the tests use) or a folder (``shared-folder``, as a ReadWriteMany volume).
Ten versions of the large MLP (``bench/models.py``, 16 MB of weights, different random weights in
each) are pushed one after the other, each through the next replica (``POST
/v2/repository/models/m/versions``). For each version the clock runs from sending the push to the
moment ``GET /v2/models/m/versions/<n>/ready`` answers 200 on all three replicas (polled every 20 ms):
the push's own time (trial load, upload, commit, load on the pushing replica), then the other
replicas' poll interval, download, digest check and load. Output: p50 and max over the versions,
and each replica's ``gateway_repository_downloaded_bytes_total``.

Usage (the dev extra brings moto)::

    .venv/bin/python bench/replicas.py [--poll-seconds 1] [--versions 10] [--store s3 --store shared-folder]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import LARGE_MLP, write_mlp  # noqa: E402

TOKEN = "bench-replicas-token"
REPLICAS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def s3_repository() -> Iterator[tuple[str, dict[str, str]]]:
    """A bucket on moto's S3 server (in this process, on loopback): its URI and the variables that reach it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        httpx.put(f"{endpoint}/bench").raise_for_status()
        yield (
            "s3://bench/models",
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench-secret",
                "AWS_REGION": "us-east-1",
            },
        )
    finally:
        server.stop()


@contextmanager
def replicas(uri: str, env: dict[str, str], work: Path, poll_seconds: float) -> Iterator[list[httpx.Client]]:
    """Three ``gateway serve`` replicas of ``uri``, each with its own cache; their REST clients."""
    processes, clients = [], []
    environment = {**os.environ, **env, "GATEWAY_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    try:
        for index in range(REPLICAS):
            http_port = free_port()
            log = (work / f"replica-{index}.log").open("wb")
            command = [sys.executable, "-m", "gateway", "serve", "--model-repository", uri]
            command += ["--repository-cache-dir", str(work / f"cache-{index}"), "--model-control-mode", "poll"]
            command += ["--repository-poll-seconds", str(poll_seconds)]
            command += ["--http-port", str(http_port), "--grpc-port", str(free_port())]
            processes.append(
                subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
            )
            clients.append(httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120))
        for client in clients:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a replica is not ready; see {work}")
                time.sleep(0.1)
        yield clients
    finally:
        for client in clients:
            client.close()
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def package(work: Path, seed: int) -> bytes:
    """A model package (tar.gz) of the large MLP with the weights of ``seed``."""
    model = work / f"mlp-{seed}" / "model.onnx"
    model.parent.mkdir(parents=True)
    write_mlp(model, LARGE_MLP, seed=seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(model, arcname="model.onnx")
    return buffer.getvalue()


def downloaded_bytes(client: httpx.Client) -> int:
    found = re.search(r"^gateway_repository_downloaded_bytes_total (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def measure(store: str, versions: int, poll_seconds: float) -> None:
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-replicas-")))
        if store == "s3":
            uri, env = stack.enter_context(s3_repository())
        else:
            uri, env = f"file://{work / 'shared'}", {}
        packages = [package(work, seed) for seed in range(1, versions + 1)]
        model_bytes = (work / "mlp-1" / "model.onnx").stat().st_size
        clients = stack.enter_context(replicas(uri, env, work, poll_seconds))
        to_all, push_answer = [], []
        for index, body in enumerate(packages):
            pusher = clients[index % REPLICAS]
            started = time.monotonic()
            answer = pusher.post(
                "/v2/repository/models/m/versions", content=body, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            answer.raise_for_status()
            push_answer.append(time.monotonic() - started)
            number = answer.json()["version"]
            while not all(c.get(f"/v2/models/m/versions/{number}/ready").status_code == 200 for c in clients):
                if time.monotonic() - started > 300:
                    raise RuntimeError(f"version {number} not served by all replicas after 300 s")
                time.sleep(0.02)
            to_all.append(time.monotonic() - started)
        print(f"\n{store}: {versions} versions of a {model_bytes / 1e6:.1f} MB model, poll every {poll_seconds} s")
        print(f"  push answered (pushing replica serves it)  p50 {statistics.median(push_answer):6.2f} s")
        print(
            f"  push -> served by all three                p50 {statistics.median(to_all):6.2f} s   "
            f"max {max(to_all):6.2f} s"
        )
        for index, client in enumerate(clients):
            got = downloaded_bytes(client)
            print(f"  replica {index} downloaded {got / 1e6:7.1f} MB ({got / model_bytes:.1f} model files)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", choices=["s3", "shared-folder"])
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
    for store in args.store or ["s3", "shared-folder"]:
        measure(store, args.versions, args.poll_seconds)


if __name__ == "__main__":
    main()
