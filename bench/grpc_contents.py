"""What decoding a gRPC inference request and encoding its answer cost, typed contents against raw, in us.

Clients other than tritonclient mostly send a KServe v2 ``ModelInferRequest`` with typed contents
(``fp32_contents``: one protobuf float per value) where tritonclient sends ``raw_input_contents`` (the
bytes as they are). For the small MLP's input (64 FP32 values) and the large one's (1,024), and an
answer of 10 and of 1,024 FP32 values, this times, in process on one core:

- parsing the request message (grpc hands the servicer the parsed message; this is the protobuf part);
- :func:`gateway.transports.grpc.codec.decode_infer_request` with typed and with raw contents;
- what it did for typed contents before it read them from their packed bytes: a list of Python
  floats turned into numpy (``array_from_values(list(contents))``);
- :func:`gateway.transports.grpc.codec.encode_infer_response` typed and raw, plus serializing the answer;
  and the former typed encoding (``contents.fp32_contents.extend(array.tolist())``).

Each figure is the median of ``--runs`` runs of ``--iterations`` calls.

    .venv/bin/python bench/grpc_contents.py [--iterations 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from gateway.core.types import InferResponse, InferTensor
from gateway.datatypes import array_from_values
from gateway.transports.grpc.codec import decode_infer_request, encode_infer_response
from protos import inference as pb


def microseconds(call: Callable[[], object], iterations: int, runs: int) -> float:
    """Median over ``runs`` of the mean time of one ``call``, in microseconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(iterations):
            call()
        times.append((time.perf_counter() - started) / iterations * 1e6)
    return statistics.median(times)


def request_wire(width: int, typed: bool) -> bytes:
    """A serialized ModelInferRequest of one FP32 row of ``width`` values, typed or raw."""
    x = np.random.default_rng(0).random((1, width), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, width])
    if typed:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        request.raw_input_contents.append(x.tobytes())
    return bytes(request.SerializeToString())


def decoding_row(width: int, time_it: Callable[[Callable[[], object]], float]) -> str:
    """One row of the decoding table: parse and decode, typed and raw, and typed through a list."""
    typed_wire, raw_wire = request_wire(width, True), request_wire(width, False)
    typed, raw = pb.ModelInferRequest.FromString(typed_wire), pb.ModelInferRequest.FromString(raw_wire)
    contents = typed.inputs[0].contents
    figures = (
        time_it(lambda: pb.ModelInferRequest.FromString(typed_wire)),
        time_it(lambda: pb.ModelInferRequest.FromString(raw_wire)),
        time_it(lambda: decode_infer_request(typed)),
        time_it(lambda: decode_infer_request(raw)),
        time_it(lambda: array_from_values(list(contents.fp32_contents), "FP32", [1, width], "x")),
    )
    return f"  {width:5}  " + "  ".join(f"{figure:12.2f}" for figure in figures)


def encoding_row(width: int, time_it: Callable[[Callable[[], object]], float]) -> str:
    """One row of the encoding table: encode and serialize, typed and raw, and typed through a list."""
    y = np.random.default_rng(1).random((1, width), dtype=np.float32)
    response = InferResponse(model_name="m", model_version="1", outputs=[InferTensor("output", "FP32", [1, width], y)])

    def through_a_list() -> bytes:
        message = pb.ModelInferResponse(model_name="m", model_version="1")
        output = message.outputs.add(name="output", datatype="FP32", shape=[1, width])
        output.contents.fp32_contents.extend(y.ravel().tolist())
        return bytes(message.SerializeToString())

    figures = (
        time_it(lambda: encode_infer_response(response, False).SerializeToString()),
        time_it(lambda: encode_infer_response(response, True).SerializeToString()),
        time_it(through_a_list),
    )
    return f"  {width:5}  " + "  ".join(f"{figure:12.2f}" for figure in figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    def time_it(call: Callable[[], object]) -> float:
        return microseconds(call, args.iterations, args.runs)

    print("request, us (one FP32 row)")
    print("  values   parse typed     parse raw  decode typed    decode raw  typed as list (before)")
    for width in (64, 1024):
        print(decoding_row(width, time_it))
    print("answer, us (encode + serialize, one FP32 row)")
    print("  values         typed           raw  typed as list (before)")
    for width in (10, 1024):
        print(encoding_row(width, time_it))


if __name__ == "__main__":
    main()
