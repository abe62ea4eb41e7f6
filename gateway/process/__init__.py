"""Processes: the one place that wires the layers together and owns their lifecycle.

- :mod:`gateway.process.server`: one gateway process (REST and gRPC over one core): start, signals,
  readiness, drain and stop; also the entry point of a worker process.
- :mod:`gateway.process.supervisor`: ``--workers N``: starts, restarts and stops worker processes and
  relays management requests between them. It is handed the worker entry point and never imports
  the server.
- :mod:`gateway.process.peers`: a worker's link to the other workers (the core's ``Peers``).
- :mod:`gateway.process.messages`: the typed messages between the supervisor and its workers.
"""
