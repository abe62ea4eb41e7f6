"""Running loaded models: the per-version scheduler with dynamic batching (:mod:`gateway.runtime.scheduler`).

It knows backends and metrics only: nothing of models on disk, requests on the wire or processes.
"""
