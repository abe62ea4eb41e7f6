"""Train a tiny digits classifier in PyTorch, export it to ONNX and write a servable model folder.

Usage::

    python -m examples.digits --repository model-repository [--model-name digits] [--force]
    gateway push examples/digits.py:classifier --name digits ...   # the same classifier, as a push entry point

writes ``model-repository/digits/1/model.onnx`` (input ``input`` FP32 ``[-1, 64]``, output ``logits``
FP32 ``[-1, 10]``) and ``model-repository/digits/config.yaml``. Uses scikit-learn's bundled
``load_digits`` data (no download); trains and exports in a few seconds on two CPU cores.
torch and scikit-learn are imported lazily, so importing this module is cheap and prints nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from converters.model import BATCH_LABEL, InputSpec
from converters.parity import ParityReport, compare_outputs
from converters.torch_onnx import export_torch_to_onnx

if TYPE_CHECKING:
    import torch

__all__ = ["build_example_repository", "classifier", "load_digits_split", "main", "train_classifier"]

NUM_FEATURES = 64
NUM_CLASSES = 10
MIN_TEST_ACCURACY = 0.95
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Batch sizes used for the ONNX Runtime vs torch parity check; the rest of the test split follows
# in batches of 64 (the config's max_batch_size). 1 and 37 prove the batch dimension is dynamic.
PARITY_BATCH_SIZES = (1, 37)
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3

CONFIG_YAML = """\
# Digits classifier (8x8 images flattened to 64 floats in [0, 1]) trained by examples/digits.py
backend: onnxruntime
max_batch_size: 64
inputs:
  - name: input
    datatype: FP32
    dims: [64]
outputs:
  - name: logits
    datatype: FP32
    dims: [10]
version_policy:
  latest:
    num_versions: 1
instance_count: 1
"""


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load scikit-learn's bundled digits data set and split it 80/20, stratified by label.

    Returns:
        ``(x_train, x_test, y_train, y_test)``: features float32 of shape ``[N, 64]`` with values in
        ``[0, 1]`` (pixel intensities 0..16 divided by 16), labels int64 of shape ``[N]`` in 0..9.
        With ``random_state=0`` the split is 1437 train / 360 test samples, always the same.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (np.asarray(digits.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (
        np.ascontiguousarray(x_train, dtype=np.float32),
        np.ascontiguousarray(x_test, dtype=np.float32),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(y_test, dtype=np.int64),
    )


def train_classifier(x_train: np.ndarray, y_train: np.ndarray, *, seed: int = 0, epochs: int = 300) -> torch.nn.Module:
    """Train an MLP ``Linear(64, 64) -> ReLU -> Linear(64, 10)`` on the digits features.

    Full-batch Adam (lr 0.01) on cross-entropy, seeded with ``seed`` inside a forked torch RNG (the
    caller's global RNG state is left untouched), so repeated runs give the same weights. The default
    300 epochs take well under a second on two CPU cores and reach about 97% test accuracy.

    Args:
        x_train: float32-convertible features, shape ``[N, 64]``.
        y_train: integer class labels 0..9, shape ``[N]``.
        seed: torch seed for weight initialisation.
        epochs: number of full-batch optimisation steps (>= 1).

    Returns:
        The trained module, in eval mode. Its forward maps float32 ``[B, 64]`` to logits
        float32 ``[B, 10]``.

    Raises:
        ValueError: if the shapes do not match, labels are outside 0..9, or ``epochs < 1``.
    """
    import torch

    if x_train.ndim != 2 or x_train.shape[1] != NUM_FEATURES:
        raise ValueError(f"x_train must have shape [N, {NUM_FEATURES}], got {list(x_train.shape)}")
    if y_train.shape != (x_train.shape[0],):
        raise ValueError(f"y_train must have shape [{x_train.shape[0]}], got {list(y_train.shape)}")
    if y_train.size and (int(y_train.min()) < 0 or int(y_train.max()) >= NUM_CLASSES):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")

    features = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    labels = torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(NUM_FEATURES, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, NUM_CLASSES),
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(features), labels)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            optimizer.step()
    return model.eval()


def classifier() -> tuple[torch.nn.Module, tuple[np.ndarray]]:
    """``gateway push examples/digits.py:classifier``: the classifier trained on the train split, and two test images.

    Returns:
        ``(model, (examples,))``: the trained module (float32 ``[B, 64]`` -> logits ``[B, 10]``) and
        float32 ``[2, 64]`` example inputs, as a push entry point returns them.
    """
    x_train, x_test, y_train, _ = load_digits_split()
    return train_classifier(x_train, y_train), (x_test[:2],)


def _predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Run ``model`` on float32 ``[B, 64]`` features; return float32 logits ``[B, 10]``."""
    import torch

    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return np.asarray(logits.numpy(), dtype=np.float32)


def _parity_batches(x: np.ndarray) -> list[np.ndarray]:
    """Split ``x`` into batches of sizes ``PARITY_BATCH_SIZES`` and then 64, covering every row."""
    batches: list[np.ndarray] = []
    start = 0
    for size in PARITY_BATCH_SIZES:
        if start < len(x):
            batches.append(x[start : start + size])
            start += size
    while start < len(x):
        batches.append(x[start : start + 64])
        start += 64
    return batches


def _check_onnx_parity(model: torch.nn.Module, onnx_path: Path, x: np.ndarray) -> ParityReport:
    """Compare ONNX Runtime (CPU) against torch on ``x`` (float32 ``[N, 64]``) in mixed-size batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference: list[dict[str, np.ndarray]] = []
    candidate: list[dict[str, np.ndarray]] = []
    for batch in _parity_batches(x):
        reference.append({OUTPUT_NAME: _predict(model, batch)})
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        candidate.append({OUTPUT_NAME: np.asarray(logits)})
    return compare_outputs(reference, candidate, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temp file in the same folder and ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a config is meant to be readable
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _validate_model_name(model_name: str) -> None:
    """Reject names that are not a single, plain folder name.

    Raises:
        ValueError: for empty names, ``.``/``..``, hidden names or names containing path separators.
    """
    if (
        not model_name
        or model_name in {".", ".."}
        or model_name.startswith(".")
        or "/" in model_name
        or "\\" in model_name
        or (os.altsep is not None and os.altsep in model_name)
    ):
        raise ValueError(f"model name must be a plain folder name, got {model_name!r}")


@dataclass(frozen=True)
class _BuildResult:
    """What :func:`_build` produced: the model folder, test accuracy and the ONNX parity report."""

    model_dir: Path
    test_accuracy: float
    parity: ParityReport


def _build(repository: Path, model_name: str) -> _BuildResult:
    """Train, export, check parity and write the model folder; see :func:`build_example_repository`."""
    import torch

    _validate_model_name(model_name)
    x_train, x_test, y_train, y_test = load_digits_split()
    model = train_classifier(x_train, y_train)
    accuracy = float((_predict(model, x_test).argmax(axis=1) == y_test).mean())
    if accuracy < MIN_TEST_ACCURACY:
        raise RuntimeError(f"test accuracy {accuracy:.4f} is below the expected {MIN_TEST_ACCURACY}")

    model_dir = Path(repository) / model_name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    # Export into a staging folder beside the final file, check parity there, and only then move the
    # model into place: the repository never holds a model that failed the check.
    with tempfile.TemporaryDirectory(dir=version_dir, prefix=".staging-") as staging:
        staged = export_torch_to_onnx(
            model,
            (torch.from_numpy(x_test[:2]),),
            Path(staging) / "model.onnx",
            input_specs=[InputSpec(INPUT_NAME, np.dtype(np.float32), (BATCH_LABEL, NUM_FEATURES))],
            output_names=[OUTPUT_NAME],
        )
        parity = _check_onnx_parity(model, staged, x_test)
        if not parity.ok:
            raise RuntimeError("ONNX Runtime output differs from torch:\n" + parity.table())
        os.replace(staged, version_dir / "model.onnx")
    _write_text_atomic(model_dir / "config.yaml", CONFIG_YAML)
    return _BuildResult(model_dir=model_dir, test_accuracy=accuracy, parity=parity)


def build_example_repository(repository: Path, *, model_name: str = "digits") -> Path:
    """Train the digits classifier and write a servable ONNX model folder into ``repository``.

    Writes ``<repository>/<model_name>/1/model.onnx`` (input ``input`` FP32 ``[-1, 64]``, output
    ``logits`` FP32 ``[-1, 10]``, dynamic batch dim) and ``<repository>/<model_name>/config.yaml``,
    replacing existing files atomically (temp file in the same folder, then ``os.replace``). The
    model only lands in the repository after ONNX Runtime (CPU) matches torch on the whole test
    split (batches of 1, 37 and 64 rows) within ``atol=1e-4, rtol=1e-3``.

    Args:
        repository: model repository root; created if missing.
        model_name: folder name of the model inside the repository.

    Returns:
        The model folder ``<repository>/<model_name>``.

    Raises:
        ValueError: if ``model_name`` is not a plain folder name, or the export fails its checks.
        RuntimeError: if test accuracy is below 95% or the ONNX parity check fails.
        OSError: if the files cannot be written.
    """
    return _build(Path(repository), model_name).model_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: build the example model folder and print accuracy and parity.

    Skips (exit status 0) when ``<repository>/<model-name>/1/model.onnx`` already exists, unless
    ``--force`` is given.
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.digits",
        description="Train a digits classifier, export it to ONNX and write a servable model folder.",
    )
    parser.add_argument("--repository", type=Path, required=True, help="model repository root folder")
    parser.add_argument("--model-name", default="digits", help="model folder name (default: digits)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the model already exists")
    args = parser.parse_args(argv)

    repository: Path = args.repository
    model_name: str = args.model_name
    try:
        _validate_model_name(model_name)
    except ValueError as error:
        parser.error(str(error))
    model_file = repository / model_name / "1" / "model.onnx"
    if model_file.exists() and not args.force:
        print(f"{model_file} already exists; skipping (use --force to rebuild)")
        return 0

    started = time.perf_counter()
    result = _build(repository, model_name)
    elapsed = time.perf_counter() - started
    print(f"test accuracy: {result.test_accuracy:.4f}")
    print("ONNX Runtime (CPU) vs torch parity on the test split:")
    print(result.parity.table())
    print(f"wrote {result.model_dir} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
