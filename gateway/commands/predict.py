"""``gateway predict MODEL --input FILE``: run a model on the tensors of a file and print its outputs.

The file is read and its arrays cast to the model's inputs by :mod:`gateway.commands.tensors`;
the request goes with Triton's binary tensor data extension (:meth:`gateway.client.GatewayClient.infer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.client import DEFAULT_SERVER
from gateway.commands.common import (
    JsonOption,
    ModelArgument,
    ServerOption,
    VersionOption,
    fail,
    gateway_client,
    print_json,
)


def predict(
    model: ModelArgument,
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            metavar="FILE",
            help="The inputs: .npy (the model's only input), .npz (one array per input name), or .json: "
            '{"INPUT": nested list} or a KServe v2 inference request body.',
            show_default=False,
        ),
    ],
    version: VersionOption = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            metavar="K",
            min=1,
            help="Also show the K best classes of each row of a classifier's output (a 2-D float output).",
            show_default=False,
        ),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    json_output: JsonOption = False,
) -> None:
    """Run a model on the inputs in a file and print its outputs (shape, datatype, values).

    The arrays are cast to the model's input datatypes (from its metadata); a missing batch
    dimension is added. Values are sent with Triton's binary tensor data extension.
    """
    from gateway.commands.tensors import (
        BestClasses,
        InputFileError,
        as_json,
        described,
        is_classifier,
        print_outputs,
        read_inputs,
        top_classes,
    )

    with gateway_client(server) as client:
        metadata = client.model_metadata(model, version)
        try:
            inputs = read_inputs(input_file, metadata["inputs"])
        except InputFileError as error:
            fail(f"{input_file}: {error}")
        result = client.infer(model, inputs, version)
    best: BestClasses = {}
    if top is not None:
        best = {output.name: top_classes(output.array, top) for output in result.outputs if is_classifier(output)}
        if not best:
            fail(f"--top needs a classifier's output (2-D float); model '{model}' has {described(result)}")
    if json_output:
        print_json(as_json(result, best))
        return
    print_outputs(result, best)
