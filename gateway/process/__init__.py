"""Processes: the one place that wires the layers together and owns their lifecycle.

- :mod:`gateway.process.server`: one gateway process (REST and gRPC over one core): start, signals,
  readiness, drain and stop; also the entry point of a worker process.
- :mod:`gateway.process.supervisor`: ``--workers N``: starts, restarts and stops worker processes and
  relays management requests between them. It is handed the worker and runner entry points and never
  imports the server.
- :mod:`gateway.process.runner_pool`, :mod:`gateway.process.runner`, :mod:`gateway.process.runner_host`:
  model runners, one process per loaded version shared by every worker: started, restarted and
  stopped by the supervisor, asked for by a worker's repository.
- :mod:`gateway.process.children`, :mod:`gateway.process.loops`: how children are started (a fork
  server) and the event loop every process runs on.
- :mod:`gateway.process.peers`: a worker's link to the other workers (the core's ``Peers``).
- :mod:`gateway.process.messages`: the typed messages between the supervisor, its workers and runners.
"""
