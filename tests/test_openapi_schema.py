"""schemathesis over the gateway's own OpenAPI schema (``/openapi.json``), against a real gateway process.

Every documented operation is called with generated data (schemathesis' hypothesis strategies,
valid and invalid data): no answer may be a 5xx, and each must conform to the
schema: a documented status code, a documented content type and a body that matches the documented
schema. The management routes are called with the admin token (so that they reach their own
checks) and schemathesis' ``ignored_auth`` check calls them without it too: the 401 must be
documented. The model names of the repository are given as examples, so that the loaded model is
reached, not only unknown names.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN, GatewayProcess, start_gateway, write_identity_model

# "corrupt" is left out: a model that failed to load answers 503 by design, which not_a_server_error counts.
MODEL_NAMES = ["identity_fp32", "nope"]
# The delete routes get a model of their own to delete, so that the others keep reaching identity_fp32.
DELETED_MODEL_NAMES = ["spare", "nope"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


@pytest.fixture(scope="module")
def api_gateway(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    root = tmp_path_factory.mktemp("openapi-repository")
    write_identity_model(root / "identity_fp32" / "1" / "model.onnx", "FP32")
    write_identity_model(root / "spare" / "1" / "model.onnx", "FP32")
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    server = start_gateway(root, tmp_path_factory.mktemp("openapi-logs") / "gateway.log")
    yield server
    assert server.process.poll() is None, f"the gateway died:\n{server.logs()}"
    server.stop()


@pytest.fixture(scope="module")
def api_schema(api_gateway: GatewayProcess) -> Any:
    raw = api_gateway.http.get("/openapi.json").json()
    for operations in raw["paths"].values():
        for method, operation in operations.items():
            names = DELETED_MODEL_NAMES if method == "delete" else MODEL_NAMES
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "model_name":
                    parameter["examples"] = {name: {"value": name} for name in names}
                elif parameter["name"] == "model_version":
                    parameter["examples"] = {"served": {"value": "1"}, "absent": {"value": "7"}}
    return schemathesis.openapi.from_dict(raw)


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


# schemathesis' pytest integration (schema.parametrize / from_fixture) breaks on pytest 9.2 (it reads
# request.node._nodeid); the operations' hypothesis strategies are driven directly instead.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_conforms_to_the_schema(api_schema, api_gateway, mode):
    operations = _operations(api_schema)
    assert len(operations) >= 20
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: Any) -> None:
            case.call_and_validate(
                base_url=api_gateway.http_url,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                checks=CHECKS,
                timeout=30,
            )

        try:
            call()
        except Unsatisfiable:  # nothing invalid to send (e.g. GET /v2/health/live has no parameters)
            assert mode is GenerationMode.NEGATIVE


def test_the_infer_routes_document_their_body_and_errors(api_gateway):
    spec = api_gateway.http.get("/openapi.json").json()
    for path in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"):
        operation = spec["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["inputs"]
        tensor = body["properties"]["inputs"]["items"]
        assert set(tensor["required"]) == {"name", "shape", "datatype"}
        assert (
            "FP32" in tensor["properties"]["datatype"]["enum"] and "BYTES" in tensor["properties"]["datatype"]["enum"]
        )
        assert {"200", "400", "404", "413", "503"} <= set(operation["responses"])
        error = operation["responses"]["413"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorJson"}
    assert spec["components"]["schemas"]["ErrorJson"]["required"] == ["error"]
    load = spec["paths"]["/v2/repository/models/{model_name}/load"]["post"]
    assert "401" in load["responses"] and load["security"] == [{"adminToken": []}]
    assert "/metrics" not in spec["paths"]
