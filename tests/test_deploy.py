"""The deployment files (deploy/, Dockerfile, .dockerignore) agree with the gateway itself.

Routes come from the real FastAPI app, ports and setting names from ``GatewaySettings``, the CLI's
options from the real ``gateway`` command; a renamed route, port or setting fails here instead of in
a probe. The dashboard may only query the gateway's metrics. Nothing here starts a server, Docker,
Prometheus or Grafana, and nothing imports the gRPC modules (their protobuf names clash with
tritonclient's in one process).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from gateway.admin_token import AdminToken
from gateway.cli import app as cli_app
from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.repository.model_repository import ModelRepository
from gateway.settings import ENV_PREFIX, GatewaySettings, ModelControlMode, store_uri
from gateway.transports.rest.app import create_app

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yaml"
REPLICAS_COMPOSE_FILE = DEPLOY / "docker-compose.replicas.yaml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "gateway.json"
DATASOURCES_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS_FILE = DEPLOY / "grafana" / "provisioning" / "dashboards" / "gateway.yaml"
K8S = DEPLOY / "kubernetes"
K8S_BASE = K8S / "base"
K8S_BUCKET = K8S / "bucket"
KSERVE = DEPLOY / "kserve"
# Kinds defined by a CRD, whose schemas the Kubernetes API's do not hold: checked by the tests below only.
CUSTOM_KINDS = {"InferenceService", "ServingRuntime"}

HTTP_PORT: int = GatewaySettings.model_fields["http_port"].default
GRPC_PORT: int = GatewaySettings.model_fields["grpc_port"].default
SETTING_ENV_VARS = {f"{ENV_PREFIX}{name.upper()}": name for name in GatewaySettings.model_fields}
# Settings being added in the same piece of work as these files (the management API's bearer token,
# structured logs): allowed even before they are GatewaySettings fields. Drop each from this set once
# its field has landed, so a later rename is caught.
PENDING_SETTING_ENV_VARS = {"GATEWAY_ADMIN_TOKEN", "GATEWAY_LOG_FORMAT"}

READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
METRICS_PATH = "/metrics"

# The gateway's metrics, by type: histograms are queried through their _bucket, _sum, _count series.
COUNTERS = {
    "gateway_inference_requests_total",
    "gateway_shadow_requests_total",
    "gateway_repository_downloaded_bytes_total",
    "gateway_model_evictions_total",
    "gateway_model_loads_on_request_total",
}
GAUGES = {
    "gateway_inference_inflight_requests",
    "gateway_model_ready",
    "gateway_model_resident_bytes",
    "gateway_model_gpu_bytes",
    "gateway_repository_stale",
    "gateway_repository_last_sync_timestamp_seconds",
}
#: The shared repository's metrics: one per replica, no model label (not filtered on $model).
REPOSITORY_METRICS = {
    "gateway_repository_downloaded_bytes_total",
    "gateway_repository_stale",
    "gateway_repository_last_sync_timestamp_seconds",
}
HISTOGRAMS = {
    "gateway_inference_request_duration_seconds",
    "gateway_inference_queue_duration_seconds",
    "gateway_inference_compute_duration_seconds",
    "gateway_inference_batch_size",
    "gateway_model_load_duration_seconds",
    "gateway_model_warmup_duration_seconds",
    "gateway_shadow_duration_seconds",
}
QUERYABLE_SERIES = (
    COUNTERS | GAUGES | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}


# ---------------------------------------------------------------------------------------------------
# Loading and small helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def one_of_kind(path: Path, kind: str) -> dict[str, Any]:
    docs = [doc for doc in load_docs(path) if doc.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def compose_value(value: Any) -> str:
    """A compose value with ``${VAR:-default}`` / ``${VAR-default}`` replaced by its default."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(value))


def compose_env(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment; None for a name without a value (passed from the shell when set there)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict([*item.split("=", 1), None][:2] for item in env)
    return {name: None if value is None else compose_value(value) for name, value in env.items()}


def check_gateway_env(env: dict[str, str | None], where: str) -> None:
    """Every GATEWAY_* name is a real setting, and every plain value is one the settings accept."""
    given: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        assert name in SETTING_ENV_VARS or name in PENDING_SETTING_ENV_VARS, (
            f"{where}: {name} is not a gateway setting (known: {sorted(SETTING_ENV_VARS)})"
        )
        if name in SETTING_ENV_VARS and value is not None:
            given[SETTING_ENV_VARS[name]] = value
    GatewaySettings(**given)  # raises on a value the gateway would refuse at start


def setting(env: dict[str, str | None], field: str) -> Any:
    """The value the gateway would use for ``field`` under ``env`` (its default when unset)."""
    value = env.get(f"{ENV_PREFIX}{field.upper()}")
    return GatewaySettings(**({field: value} if value is not None else {})).model_dump()[field]


def k8s_env(container: dict[str, Any]) -> dict[str, str | None]:
    """A container's env; None for a value taken from elsewhere (valueFrom)."""
    return {item["name"]: (str(item["value"]) if "value" in item else None) for item in container.get("env", [])}


def container_port(container: dict[str, Any], port: int | str) -> int:
    """The number of a container port given by number or by name."""
    for item in container.get("ports", []):
        if port in (item["containerPort"], item.get("name")):
            return int(item["containerPort"])
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def probe(container: dict[str, Any], kind: str) -> tuple[str, int]:
    """(path, port number) of an httpGet probe."""
    http_get = container[kind]["httpGet"]
    return http_get["path"], container_port(container, http_get["port"])


def serve_options() -> set[str]:
    """The options of the real ``gateway serve`` command."""
    command = typer.main.get_command(cli_app)
    serve = command.commands["serve"]
    return {opt for param in serve.params for opt in param.opts}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def dockerfile_user_uid() -> int:
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile sets no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]!r}: use a numeric uid so Kubernetes' runAsNonRoot can verify it"
    return int(uid)


def dashboard_targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    panels = [*dashboard["panels"]]
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return [(panel["title"], target) for panel in panels for target in panel.get("targets", [])]


def walk(node: Any) -> Any:
    """Every dict inside a JSON document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside strings, label matchers, ranges
    and grouping lists that are neither functions nor keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.groups()
        if call is None and name not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def route_paths(routes: Any, prefix: str = "") -> set[str]:
    """Full paths of the app's routes, routes of included routers and mounts too.

    FastAPI >= 0.16x keeps an included router as one route (``original_router`` and the include's
    prefix) instead of copying its routes into the app.
    """
    paths: set[str] = set()
    for route in routes:
        path = getattr(route, "path", None)
        if path is not None:
            paths.add(prefix + path)
        if hasattr(route, "original_router"):
            include_prefix = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            paths |= route_paths(route.original_router.routes, prefix + include_prefix)
        elif path is not None and getattr(route, "routes", None):  # a Mount of a sub-application
            paths |= route_paths(route.routes, prefix + path)
    return paths


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Paths served by the real REST app."""
    repository = ModelRepository(tmp_path_factory.mktemp("empty-repository"), 64)
    control = RepositoryControl(
        repository,
        ModelControlMode.NONE,
        admin_token=AdminToken("deploy-test-token"),
        max_upload_bytes=GatewaySettings.model_fields["max_upload_bytes"].default,
    )
    app = create_app(DataPlane(repository), control)
    paths = route_paths(app.routes) | set(app.openapi()["paths"])
    assert READY_PATH in paths and LIVE_PATH in paths
    return paths


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return one_of_kind(K8S_BASE / "deployment.yaml", "Deployment")


@pytest.fixture(scope="module")
def gateway_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return one_of_kind(KSERVE / "servingruntime.yaml", "ServingRuntime")


# ---------------------------------------------------------------------------------------------------
# (a) Every file parses


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    yaml_files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    json_files = sorted(DEPLOY.rglob("*.json"))
    expected = {
        COMPOSE_FILE,
        PROMETHEUS_FILE,
        DASHBOARD_FILE,
        DATASOURCES_FILE,
        DASHBOARD_PROVIDERS_FILE,
        *(K8S_BASE / name for name in ("deployment.yaml", "service.yaml", "hpa.yaml", "kustomization.yaml")),
        *(K8S / name for name in ("pvc.yaml", "secret.example.yaml", "kustomization.yaml", "prometheus-adapter.yaml")),
        *(K8S_BUCKET / name for name in ("kustomization.yaml", "deployment-patch.yaml", "secret.example.yaml")),
        KSERVE / "servingruntime.yaml",
        KSERVE / "inferenceservice.yaml",
        KSERVE / "inferenceservice-bucket.yaml",
    }
    assert expected <= set(yaml_files) | set(json_files)
    for path in yaml_files:
        docs = load_docs(path)
        assert docs, f"{path} holds no YAML document"
        assert all(isinstance(doc, dict) for doc in docs), path
    for path in json_files:
        assert isinstance(json.loads(path.read_text()), dict), path


# ---------------------------------------------------------------------------------------------------
# (b) Dockerfile and .dockerignore


def test_dockerfile_matches_the_gateway(routes: set[str]) -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "keep the build multi-stage"
    assert all("-slim" in base for base in froms)
    assert any(keyword == "ARG" and rest.startswith("PYTHON_VERSION=3.11") for keyword, rest in instructions)
    assert any(keyword == "ARG" and rest.startswith("EXTRAS") for keyword, rest in instructions)

    exposed = {
        int(port.split("/")[0]) for keyword, rest in instructions if keyword == "EXPOSE" for port in rest.split()
    }
    assert exposed == {HTTP_PORT, GRPC_PORT}

    healthchecks = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    paths = re.findall(r"/v2/[\w/]+", healthchecks[0])
    assert paths == [READY_PATH] and READY_PATH in routes
    assert f"'{HTTP_PORT}'" in healthchecks[0] or f":{HTTP_PORT}/" in healthchecks[0]

    env: dict[str, str | None] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    check_gateway_env(env, "Dockerfile ENV")
    assert env["GATEWAY_HOST"] == "0.0.0.0", "a container must listen on every interface"
    assert env["GATEWAY_MODEL_REPOSITORY"] == "/models"
    assert setting(env, "http_port") == HTTP_PORT and setting(env, "grpc_port") == GRPC_PORT

    assert dockerfile_user_uid() != 0
    entrypoint = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    cmd = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == [["gateway"]] and "gateway" in scripts
    assert cmd == [["serve"]]


def test_dockerfile_takes_torch_from_the_cpu_index() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "onnxruntime-gpu" in text


def test_dockerignore_keeps_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in patterns and ".git" in patterns
    copied = [
        source
        for keyword, rest in dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (REPO_ROOT / source).exists(), source
        assert not any(fnmatch(source, pattern.rstrip("/")) for pattern in patterns), f"{source} is dockerignored"


# ---------------------------------------------------------------------------------------------------
# (b) docker compose, Prometheus, Grafana provisioning


def published_container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for item in service.get("ports", []):
        if isinstance(item, dict):
            ports.add(int(item["target"]))
        else:
            ports.add(int(str(item).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def volume_target(service: dict[str, Any], source: str) -> tuple[str, str]:
    """(target, options) of the service's bind mount of ``source`` (a path relative to deploy/)."""
    for item in service.get("volumes", []):
        parts = str(item).split(":")
        if parts[0] == source:
            return parts[1], parts[2] if len(parts) > 2 else ""
    raise AssertionError(f"no volume from {source}")


def test_compose_gateway_matches_the_gateway(compose: dict[str, Any], routes: set[str]) -> None:
    gateway = compose["services"]["gateway"]
    assert (DEPLOY / gateway["build"]["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / gateway["build"].get("dockerfile", "Dockerfile")).is_file()
    assert "EXTRAS" in gateway["build"]["args"]

    env = compose_env(gateway)
    check_gateway_env(env, "docker-compose.yaml gateway")
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    http_port, grpc_port = setting(env, "http_port"), setting(env, "grpc_port")
    assert (http_port, grpc_port) == (HTTP_PORT, GRPC_PORT)
    assert published_container_ports(gateway) == {http_port, grpc_port}

    target, options = volume_target(gateway, "../model-repository")
    assert target == env["GATEWAY_MODEL_REPOSITORY"] == "/models"
    assert "ro" in options.split(","), "the model repository is mounted read-only"

    test = gateway["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    urls = re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/]+)", command)
    assert urls == [(str(http_port), READY_PATH)]
    assert READY_PATH in routes


def test_compose_replicas_follow_one_bucket() -> None:
    """docker-compose.replicas.yaml: three replicas following the bucket its MinIO makes, each on its own ports."""
    services = load_yaml(REPLICAS_COMPOSE_FILE)["services"]
    replicas = {name: service for name, service in services.items() if name.startswith("gateway-")}
    assert len(replicas) == 3
    bucket_command = " ".join(services["create-bucket"]["entrypoint"])
    published: list[str] = []
    for name, service in replicas.items():
        env = compose_env(service)
        check_gateway_env(env, f"docker-compose.replicas.yaml {name}")
        repository = env["GATEWAY_MODEL_REPOSITORY"] or ""
        bucket = repository.removeprefix("s3://").split("/")[0]
        assert repository.startswith("s3://") and f"local/{bucket}" in bucket_command, repository
        assert setting(env, "model_control_mode").value == "poll"
        assert env["GATEWAY_S3_ENDPOINT_URL"] == "http://minio:9000" and "9000:9000" in services["minio"]["ports"]
        assert "s3" in compose_value(service["build"]["args"]["EXTRAS"]).split(",")
        assert "GATEWAY_ADMIN_TOKEN" in env, f"{name}: one admin token for every replica, from the shell"
        assert published_container_ports(service) == {setting(env, "http_port"), setting(env, "grpc_port")}
        published += [str(port).split(":")[0] for port in service["ports"]]
        assert service["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
        assert "/cache" in service["tmpfs"] and env["GATEWAY_REPOSITORY_CACHE_DIR"] == "/cache"
    assert len(set(published)) == len(published) == 6, published


def test_compose_depends_on_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"gateway", "prometheus", "grafana"} <= set(services)
    conditions = {}
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            conditions[(name, dependency)] = spec["condition"]
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck to wait for"
    assert conditions[("prometheus", "gateway")] == "service_healthy"
    assert conditions[("grafana", "prometheus")] == "service_healthy"
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")


def test_prometheus_scrapes_the_gateway_http_port(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_FILE)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["gateway"]
    assert job["metrics_path"] == METRICS_PATH
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    gateway = compose["services"]["gateway"]
    http_port = setting(compose_env(gateway), "http_port")
    assert targets == [f"gateway:{http_port}"]
    assert http_port in published_container_ports(gateway)

    prometheus = compose["services"]["prometheus"]
    target, _ = volume_target(prometheus, "./prometheus/prometheus.yml")
    assert target == "/etc/prometheus/prometheus.yml"


def test_metrics_path_is_a_real_route(routes: set[str]) -> None:
    if METRICS_PATH not in routes:
        pytest.skip("the REST app has no /metrics route yet (the metrics endpoint lands separately)")
    assert METRICS_PATH in routes


def test_grafana_provisioning_matches_compose_and_dashboard(compose: dict[str, Any], dashboard: dict[str, Any]) -> None:
    datasources = load_yaml(DATASOURCES_FILE)["datasources"]
    defaults = [source for source in datasources if source.get("isDefault")]
    assert len(defaults) == 1
    datasource = defaults[0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert 9090 in published_container_ports(compose["services"]["prometheus"])
    scrape_interval = load_yaml(PROMETHEUS_FILE)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval, "$__rate_interval is computed from it"

    # The dashboard names this datasource by its uid everywhere (no datasource variable).
    refs = [node["datasource"] for node in walk(dashboard) if "datasource" in node]
    assert refs
    for ref in refs:
        assert isinstance(ref, dict), f"datasource {ref!r}: refer to datasources by uid"
        if ref.get("type") != "grafana":
            assert ref == {"type": "prometheus", "uid": datasource["uid"]}
    assert not any(variable["type"] == "datasource" for variable in dashboard["templating"]["list"])

    grafana = compose["services"]["grafana"]
    provisioning_target, _ = volume_target(grafana, "./grafana/provisioning")
    assert provisioning_target == "/etc/grafana/provisioning"
    dashboards_target, _ = volume_target(grafana, "./grafana/dashboards")
    providers = load_yaml(DASHBOARD_PROVIDERS_FILE)["providers"]
    assert [provider["options"]["path"] for provider in providers] == [dashboards_target]
    assert all(provider["type"] == "file" for provider in providers)
    home = compose_env(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        assert home == f"{dashboards_target}/{DASHBOARD_FILE.name}"


# ---------------------------------------------------------------------------------------------------
# (b) Kubernetes


def test_k8s_deployment_matches_the_gateway(
    deployment: dict[str, Any], gateway_container: dict[str, Any], routes: set[str]
) -> None:
    container = gateway_container
    env = k8s_env(container)
    check_gateway_env(env, "deployment.yaml")
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    http_port, grpc_port = setting(env, "http_port"), setting(env, "grpc_port")
    assert (http_port, grpc_port) == (HTTP_PORT, GRPC_PORT)
    assert container_port(container, "http") == http_port
    assert container_port(container, "grpc") == grpc_port
    assert {item["containerPort"] for item in container["ports"]} == {http_port, grpc_port}
    assert "args" not in container or container["args"][:1] == ["serve"]

    assert probe(container, "livenessProbe") == (LIVE_PATH, http_port)
    assert probe(container, "readinessProbe") == (READY_PATH, http_port)
    if "startupProbe" in container:
        assert probe(container, "startupProbe") == (READY_PATH, http_port)
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        if kind in container:
            assert container[kind]["httpGet"]["path"] in routes

    token = next(item for item in container["env"] if item["name"] == "GATEWAY_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "gateway-admin-token", "key": "token"}

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(http_port)
    assert annotations["prometheus.io/path"] == METRICS_PATH
    assert deployment["spec"]["replicas"] == 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_k8s_deployment_is_hardened_and_shares_the_repository_volume(
    deployment: dict[str, Any], gateway_container: dict[str, Any]
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container
    security = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    for context in (pod.get("securityContext", {}), container["securityContext"]):
        assert context.get("runAsUser", dockerfile_user_uid()) == dockerfile_user_uid(), "the image's USER"
    assert "runAsUser" in security
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][section])

    # The repository is the ReadWriteMany volume, given as a file:// URI: followed by every replica
    # (poll mode), written by pushes through any of them, so mounted read-write.
    env = k8s_env(container)
    settings = GatewaySettings(**{SETTING_ENV_VARS[k]: v for k, v in env.items() if k in SETTING_ENV_VARS and v})
    assert settings.store_uri == "file:///models"
    assert settings.model_control_mode is ModelControlMode.POLL
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    repository_mount = mounts["/models"]
    assert repository_mount.get("readOnly", False) is False
    claim = volumes[repository_mount["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == "model-repository"
    pvc = one_of_kind(K8S / "pvc.yaml", "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim["claimName"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "emptyDir" in volumes[mounts[str(settings.repository_folder)]["name"]], "each replica's own cache"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must stay writable on a read-only root"


def test_k8s_service_targets_the_container_ports(deployment: dict[str, Any], gateway_container: dict[str, Any]) -> None:
    service = one_of_kind(K8S_BASE / "service.yaml", "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}
    for name, port in ports.items():
        target = container_port(gateway_container, port.get("targetPort", port["port"]))
        assert target == container_port(gateway_container, name) == port["port"]
    assert ports["grpc"]["appProtocol"] == "grpc"


def test_k8s_hpa_scales_on_requests_in_flight_through_the_adapter_rule(
    deployment: dict[str, Any], gateway_container: dict[str, Any]
) -> None:
    hpa = one_of_kind(K8S_BASE / "hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    resources = [metric["resource"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Resource"]
    assert any(item["name"] == "cpu" and item["target"]["type"] == "Utilization" for item in resources)
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in gateway_container["resources"]["requests"], "CPU utilization needs a CPU request"

    pods = [metric["pods"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"]
    assert len(pods) == 1 and pods[0]["target"]["type"] == "AverageValue"
    # The adapter's rule serves that name, from a gauge the gateway exports, per namespace and pod.
    adapter = one_of_kind(K8S / "prometheus-adapter.yaml", "ConfigMap")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    rule = next(rule for rule in rules if rule["name"]["as"] == pods[0]["metric"]["name"])
    assert promql_metric_names(rule["seriesQuery"]) <= GAUGES
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert re.fullmatch(rule["name"]["matches"], pods[0]["metric"]["name"])


def test_k8s_secrets_and_kustomizations(gateway_container: dict[str, Any]) -> None:
    secret = one_of_kind(K8S / "secret.example.yaml", "Secret")
    ref = next(item for item in gateway_container["env"] if item["name"] == "GATEWAY_ADMIN_TOKEN")
    assert secret["metadata"]["name"] == ref["valueFrom"]["secretKeyRef"]["name"]
    assert ref["valueFrom"]["secretKeyRef"]["key"] in secret["stringData"]

    # Every manifest is listed, except the example Secrets (no placeholder reaches a cluster) and the
    # adapter's rule (applied where the adapter runs).
    base = load_yaml(K8S_BASE / "kustomization.yaml")
    assert set(base["resources"]) == {path.name for path in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    shared_volume = load_yaml(K8S / "kustomization.yaml")
    assert set(shared_volume["resources"]) == {"pvc.yaml", "base"}
    bucket = load_yaml(K8S_BUCKET / "kustomization.yaml")
    assert bucket["resources"] == ["../base"]
    assert [patch["path"] for patch in bucket["patches"]] == ["deployment-patch.yaml"]


def test_k8s_bucket_overlay_takes_the_repository_and_credentials_from_a_secret() -> None:
    patch = one_of_kind(K8S_BUCKET / "deployment-patch.yaml", "Deployment")
    container = patch["spec"]["template"]["spec"]["containers"][0]
    env = k8s_env(container)
    check_gateway_env(env, "bucket/deployment-patch.yaml")
    assert (store_uri(env["GATEWAY_MODEL_REPOSITORY"] or "") or "").startswith("s3://")
    secret = one_of_kind(K8S_BUCKET / "secret.example.yaml", "Secret")
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The manifests ``kubectl kustomize`` renders from ``folder``."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc is not None]


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed: the kustomizations are not rendered"
)
def test_k8s_kustomizations_render_both_ways_of_sharing_the_repository() -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for folder, expected_uri in ((K8S, "file:///models"), (K8S_BUCKET, "s3://")):
        manifests = kustomize(folder)
        for manifest in manifests:
            kubernetes_validate.validate(manifest, version, strict=True)
        kinds = sorted(manifest["kind"] for manifest in manifests)
        deployment = next(manifest for manifest in manifests if manifest["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        env = k8s_env(pod["containers"][0])
        assert (env["GATEWAY_MODEL_REPOSITORY"] or "").startswith(expected_uri)
        claims = [volume for volume in pod["volumes"] if "persistentVolumeClaim" in volume]
        if folder == K8S:
            assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Service"]
            assert [claim["persistentVolumeClaim"]["claimName"] for claim in claims] == ["model-repository"]
        else:
            assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Service"]
            assert claims == []
            mounted = {mount["name"] for mount in pod["containers"][0]["volumeMounts"]}
            assert mounted <= {volume["name"] for volume in pod["volumes"]}


def test_every_kubernetes_manifest_matches_the_api_schemas() -> None:
    """Every whole manifest under deploy/ (not the kustomizations' patches) against the Kubernetes API's schemas."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    checked = []
    for path in sorted([*K8S.rglob("*.yaml"), *KSERVE.rglob("*.yaml")]):
        if path.name in {"kustomization.yaml", "deployment-patch.yaml"}:
            continue
        for manifest in load_docs(path):
            if manifest["kind"] in CUSTOM_KINDS:
                continue
            kubernetes_validate.validate(manifest, version, strict=True)
            checked.append(manifest["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Secret", "ConfigMap"} <= set(
        checked
    )


# ---------------------------------------------------------------------------------------------------
# (b) KServe


def test_kserve_runtime_ports_match_its_args(runtime: dict[str, Any], routes: set[str]) -> None:
    containers = runtime["spec"]["containers"]
    container = next(item for item in containers if item["name"] == "kserve-container")
    args = [str(arg) for arg in container["args"]]
    assert args[0] == "serve", "the image's ENTRYPOINT is `gateway`; args replace its CMD"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert set(options) <= serve_options(), f"unknown options: {set(options) - serve_options()}"
    # An env variable, not an option (which would win over it): an InferenceService may give a bucket URI.
    assert "--model-repository" not in options
    assert k8s_env(container)["GATEWAY_MODEL_REPOSITORY"] == "/mnt/models", "KServe's storage initializer's folder"
    assert options["--host"] == "0.0.0.0"
    http_port, grpc_port = int(options["--http-port"]), int(options["--grpc-port"])
    assert (http_port, grpc_port) == (8080, 9000), "KServe's conventional ports"
    GatewaySettings(http_port=http_port, grpc_port=grpc_port)

    for item in container["ports"]:
        expected = grpc_port if item.get("name") == "h2c" else http_port
        assert item["containerPort"] == expected, item
    assert probe(container, "readinessProbe") == (READY_PATH, http_port)
    assert probe(container, "livenessProbe") == (LIVE_PATH, http_port)
    assert READY_PATH in routes and LIVE_PATH in routes

    check_gateway_env(k8s_env(container), "servingruntime.yaml")
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["runAsUser"] == dockerfile_user_uid()
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])

    spec = runtime["spec"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    onnx = next(item for item in spec["supportedModelFormats"] if item["name"] == "onnx")
    assert onnx["autoSelect"] is True and "priority" in onnx
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(http_port)
    assert spec["annotations"]["prometheus.kserve.io/path"] == METRICS_PATH


def test_kserve_inferenceservice_uses_the_runtime(runtime: dict[str, Any]) -> None:
    service = one_of_kind(KSERVE / "inferenceservice.yaml", "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] == "model-gateway"
    formats = {item["name"] for item in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"(s3|gs|pvc)://", model["storageUri"])


def test_kserve_inferenceservice_following_a_bucket(runtime: dict[str, Any]) -> None:
    service = one_of_kind(KSERVE / "inferenceservice-bucket.yaml", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert "storageUri" not in model, "the gateway follows the bucket itself: no storage initializer"
    env = k8s_env(model)
    check_gateway_env(env, "inferenceservice-bucket.yaml")
    assert (store_uri(env["GATEWAY_MODEL_REPOSITORY"] or "") or "").startswith("s3://")
    assert env["GATEWAY_MODEL_CONTROL_MODE"] == "poll"
    secrets = {item["valueFrom"]["secretKeyRef"]["key"] for item in model["env"] if "valueFrom" in item}
    assert secrets == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


# ---------------------------------------------------------------------------------------------------
# (c) The dashboard queries only the gateway's metrics


def test_dashboard_identity_and_model_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "model-gateway"
    assert dashboard["title"] == "Model gateway"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    model = variables["model"]
    query = model["query"]["query"] if isinstance(model["query"], dict) else model["query"]
    assert query == "label_values(gateway_inference_requests_total, model)"
    assert model["multi"] is True and model["includeAll"] is True and model["allValue"] == ".*"

    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
    units = {panel["fieldConfig"]["defaults"]["unit"] for panel in panels}
    assert {"s", "reqps", "percentunit"} <= units


def test_dashboard_expressions_use_only_gateway_metrics(dashboard: dict[str, Any]) -> None:
    targets = dashboard_targets(dashboard)
    assert targets
    used: set[str] = set()
    for title, target in targets:
        expr = target["expr"]
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= QUERYABLE_SERIES, f"{title}: unknown metrics {names - QUERYABLE_SERIES}"
        used |= names
        # Every selector filters on the model variable; every range is $__rate_interval.
        selectors = re.findall(r"\b(gateway_\w+)(\{[^}]*\})?", expr)
        assert len(selectors) == len(re.findall(r"\bgateway_\w+", expr))
        for name, matchers in selectors:
            if name in REPOSITORY_METRICS:
                assert "by (instance)" in expr, f"{title}: {name} is shown per replica"
                continue
            assert 'model=~"$model"' in matchers, f'{title}: {name} is not filtered on model=~"$model"'
        assert all(window == "[$__rate_interval]" for window in re.findall(r"\[[^\]]*\]", expr)), title
        assert expr.count("(") == expr.count(")"), title
    # Every gateway metric is on the dashboard.
    shown = {
        name.removesuffix(suffix) for name in used for suffix in ("_bucket", "_sum", "_count") if name.endswith(suffix)
    }
    assert used | shown >= COUNTERS | GAUGES | HISTOGRAMS


def test_dashboard_shows_each_version_side_by_side_and_the_shadow_agreement(dashboard: dict[str, Any]) -> None:
    exprs = {title: target["expr"] for title, target in dashboard_targets(dashboard)}
    for title in ("Request rate per version", "Error ratio per version", "Latency p99 per version"):
        assert "by (model, version" in exprs[title], title
    agreement = exprs["Shadow agreement rate"]
    assert 'outcome="agree"' in agreement and 'outcome=~"agree|disagree"' in agreement
    assert promql_metric_names(agreement) == {"gateway_shadow_requests_total"}
    assert "gateway_shadow_duration_seconds_bucket" in exprs["Shadow latency p99"]


def test_the_dashboard_s_metric_names_are_the_gateway_s() -> None:
    """The names above (and so every dashboard query) are those the gateway registers."""
    from gateway.metrics import Metrics

    registered = {metric.name for metric in Metrics().registry.collect() if metric.name.startswith("gateway_")}
    counters = {name.removesuffix("_total") for name in COUNTERS}
    assert counters | GAUGES | HISTOGRAMS == registered


def test_promql_metric_names_helper() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (model, le) (rate(gateway_inference_batch_size_bucket{model=~"$model",'
        ' status!="a{b}"}[$__rate_interval]))) / on (model) group_left up or vector(1)'
    )
    assert promql_metric_names(expr) == {"gateway_inference_batch_size_bucket", "up"}
