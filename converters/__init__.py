"""Converters: turn a framework model into a servable artifact and check it still computes the same thing.

Each converter takes an in-memory framework model (for example a ``torch.nn.Module``) and writes a
self-contained file that a backend can load (for example a single ``.onnx`` file with a dynamic
batch dimension). :mod:`converters.parity` compares the outputs of the original model and of the
converted artifact on the same inputs.

This package knows nothing of the server: it does not read model repositories, configs or requests.
The server imports only :mod:`converters.parity`, to read the parity figures stored beside a model
(:func:`~converters.parity.read_parity_file`, :data:`~converters.parity.PARITY_FILE`); that module and
this package's ``__init__`` import no framework, only the standard library and numpy. Framework
packages (torch, tensorflow, jax...) are imported lazily inside the converter functions, so every
module here imports with only the server's dependencies installed.
"""
