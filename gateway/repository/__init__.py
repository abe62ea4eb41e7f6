"""The model repository: which models and versions exist, how each is configured, and which are loaded.

- :mod:`gateway.repository.model_repository`: the models under a folder, their load states (Triton's
  model control modes) and the loaded version that serves a request.
- :mod:`gateway.repository.version_loader`: where a version's instances load and run (``VersionHost``),
  and the in-process loader (instances, warmup, the resident-bytes measure, the scheduler).
- :mod:`gateway.repository.config`: ``config.yaml`` (inputs, outputs, batching, instance group,
  version policy), completed from the artifact.
- :mod:`gateway.repository.packages`: model packages (a tar of one version folder) received,
  unpacked safely and checked before they are installed.
- :mod:`gateway.repository.mar`: TorchServe archives (``.mar``) in a version folder, checked and
  served from their model file; nothing in them runs.

It builds each loaded version's scheduler from :mod:`gateway.runtime`, and imports nothing above it.
"""
