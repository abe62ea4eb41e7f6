"""Regenerate the Python gRPC modules from ``protos/grpc_predict_v2.proto``.

Run from the repository root::

    python -m protos.generate

This writes ``grpc_predict_v2_pb2.py``, ``grpc_predict_v2_pb2.pyi`` and
``grpc_predict_v2_pb2_grpc.py`` next to the ``.proto`` file. The proto is compiled with the
repository root as the include path and the proto path ``protos/grpc_predict_v2.proto``, so
the generated gRPC module imports ``from protos import grpc_predict_v2_pb2``.

The output depends on the installed ``grpcio-tools`` version (pinned in the ``dev`` extra);
regenerate with that version so the committed files stay reproducible.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

#: Repository root (the directory that contains the ``protos`` package).
REPO_ROOT: pathlib.Path = pathlib.Path(__file__).resolve().parent.parent

#: Path of the proto file relative to :data:`REPO_ROOT` (also its name inside protoc).
PROTO_RELPATH: str = "protos/grpc_predict_v2.proto"

#: Names of the generated files, relative to ``<out_dir>/protos/``.
GENERATED_FILES: tuple[str, ...] = (
    "grpc_predict_v2_pb2.py",
    "grpc_predict_v2_pb2.pyi",
    "grpc_predict_v2_pb2_grpc.py",
)


def protoc_command(out_dir: pathlib.Path) -> list[str]:
    """Return the ``grpc_tools.protoc`` command line that writes the modules under ``out_dir``.

    Args:
        out_dir: Output root; protoc creates ``out_dir/protos/...`` from the proto path.

    Returns:
        The argument vector, starting with the current Python interpreter.
    """
    return [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO_RELPATH,
    ]


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Compile the proto and write the generated modules under ``out_dir / "protos"``.

    Args:
        out_dir: Output root; pass the repository root to regenerate in place.

    Returns:
        Paths of the generated files, in the order of :data:`GENERATED_FILES`.

    Raises:
        RuntimeError: If protoc cannot be run, exits non-zero, or does not produce every file.
    """
    out_dir = pathlib.Path(out_dir).resolve()
    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    cmd = protoc_command(out_dir)
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(f"could not run protoc ({' '.join(cmd)}): {exc}") from exc
    if proc.returncode != 0:
        details = (proc.stderr or proc.stdout).strip()
        hint = " (install grpcio-tools, see the `dev` extra)" if "No module named" in details else ""
        raise RuntimeError(
            f"protoc failed (exit code {proc.returncode}) compiling {PROTO_RELPATH}{hint}\n"
            f"command: {' '.join(cmd)}" + (f"\n{details}" if details else "")
        )
    paths = [out_dir / "protos" / name for name in GENERATED_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"protoc exited 0 but did not produce: {', '.join(missing)}")
    return paths


def main() -> None:
    """Regenerate the committed modules in place, in ``<repo root>/protos/``."""
    for path in generate(REPO_ROOT):
        print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
