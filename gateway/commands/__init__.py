"""The verbs of the ``gateway`` command, one module per group of jobs (part of the CLI layer).

- :mod:`~gateway.commands.serve`: ``serve``, the server.
- :mod:`~gateway.commands.push`: ``push``, convert and upload a model.
- :mod:`~gateway.commands.models`: ``models`` and ``status``, what the gateway serves.
- :mod:`~gateway.commands.predict`: ``predict``, run a model on the tensors of a file
  (:mod:`~gateway.commands.tensors`: the files read and cast, the outputs shown).
- :mod:`~gateway.commands.control`: ``load``, ``unload``, ``delete`` and ``token``, the management API.
- :mod:`~gateway.commands.common`: the shared options, output and failures.

Every verb but ``serve`` and ``push`` talks to a running gateway through :mod:`gateway.client`.
"""
