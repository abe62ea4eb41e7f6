"""The large MLP in fp32 against int8 (dynamic, and static calibrated): model bytes and latency ratios.

Writes the benchmark's large MLP (``bench/models.py``: 1024-1024-1024-1024-1024-10, random weights)
as ONNX and pushes it into a scratch local repository with ``--quantize int8``, once dynamic and once
static (calibrated on random batches drawn like its inputs), through the push's own code
(:func:`gateway.push_client.push_source`), so the figures are the ones ``gateway push`` prints and
stores: bytes, and the median of ``converters.quantization.LATENCY_RUNS`` calls at batch 1 and 64
with one intra-op thread, fp32 and int8 calls interleaved. Random weights and inputs cost the same to
run as trained ones; the errors printed are only those of random data.

    .venv/bin/python bench/quantization.py [--calibration-batches 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.models import LARGE_MLP, write_mlp
from converters.onnx_file import OnnxFileSource
from converters.quantization import CompressionOptions
from gateway.push_client import push_source, stderr_progress


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration-batches", type=int, default=8, help="static int8: batches of 64 random rows")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    calibration = [
        {"input": rng.standard_normal((64, LARGE_MLP[0])).astype(np.float32)} for _ in range(args.calibration_batches)
    ]
    with tempfile.TemporaryDirectory(prefix="bench-quantization-") as work:
        model = Path(work) / "large_mlp.onnx"
        write_mlp(model, LARGE_MLP)
        for name, options in (
            ("dynamic", CompressionOptions(quantize="int8")),
            ("static", CompressionOptions(quantize="int8", calibration_data=calibration)),
        ):
            result = push_source(
                OnnxFileSource(model),
                name=f"large_mlp_{name}",
                repository=Path(work) / "repository",
                compression=options,
                progress=stderr_progress(),
            )
            report = result.quantization
            assert report is not None
            print(f"\nlarge MLP, int8 {name}:")
            print(report.table())
            ratios = ", ".join(
                f"batch {item.batch_size} {item.after_ms / item.before_ms:.2f}x" for item in report.latency
            )
            print(f"summary: bytes {report.bytes_after / report.bytes_before:.2f}x, latency {ratios} (int8 / fp32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
