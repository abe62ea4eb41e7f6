"""Runnable examples that produce model repositories the gateway can serve.

``python -m examples.digits --repository model-repository`` trains a small digits classifier,
converts it to ONNX with :mod:`converters`, checks parity and writes a ready-to-serve model folder.
"""
