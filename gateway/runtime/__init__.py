"""Running loaded models.

- :mod:`gateway.runtime.scheduler`: the per-version scheduler with dynamic batching.
- :mod:`gateway.runtime.shared_tensors`, :mod:`gateway.runtime.runner_client`,
  :mod:`gateway.runtime.runner_server`: a version's scheduler in a model runner process, reached by a
  front end through shared memory and a Unix socket.
- :mod:`gateway.runtime.memory_budget`, :mod:`gateway.runtime.warmup`, :mod:`gateway.runtime.reshape`.

It knows backends and metrics only: nothing of models on disk, requests on the wire or processes.
"""
