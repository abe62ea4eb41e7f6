"""Converters: turn a framework model into a servable artifact and check it still computes the same thing.

Each converter takes an in-memory framework model (for example a ``torch.nn.Module``) and writes a
self-contained file that a backend can load (for example a single ``.onnx`` file with a dynamic
batch dimension). :mod:`converters.parity` compares the outputs of the original model and of the
converted artifact on the same inputs.

This package knows nothing of the server: it does not read model repositories, configs or requests,
and the server never imports it. Framework packages (torch, ...) are imported lazily inside the
converter functions, so ``import converters`` works with only the server's dependencies installed.
"""
