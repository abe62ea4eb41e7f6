"""HTTP/REST transport: the ASGI application and its routes.

- :mod:`~gateway.transports.rest.app`: the application the server runs (route table, error
  handlers, ``/metrics``, CORS) and :func:`~gateway.transports.rest.app.create_rest_app`.
- :mod:`~gateway.transports.rest.fast_path`: ``POST .../infer`` answered without FastAPI's routing.
- :mod:`~gateway.transports.rest.v2`: KServe v2 routes; :mod:`~gateway.transports.rest.codec`: its
  JSON and binary tensor codec; :mod:`~gateway.transports.rest.openapi`: the JSON objects documented.
- :mod:`~gateway.transports.rest.tfserving`, :mod:`~gateway.transports.rest.torchserve`: the TF
  Serving and TorchServe REST dialects, over :mod:`~gateway.transports.rest.rows` (their row and
  columnar JSON).
- :mod:`~gateway.transports.rest.body`: request bodies read within the limits;
  :mod:`~gateway.transports.rest.responses`: JSON answers and error bodies.
"""
