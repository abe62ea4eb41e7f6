"""Benchmarks of the gateway (see README.md)."""
