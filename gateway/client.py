"""The client of a running gateway's REST API, used by the CLI's verbs and by ``gateway push``.

One place for the server's base URL (``--server``, else ``GATEWAY_SERVER``, else the local gateway
``http://127.0.0.1:8000``), the admin token (``--token``, else ``GATEWAY_ADMIN_TOKEN``, else the token
file a server on this machine wrote, see :mod:`gateway.admin_token`), and the translation of every
failure into one line that says what failed and what to do next (:class:`ClientError`).

The requests are those of the KServe v2 REST protocol (metadata, inference with Triton's binary
tensor data extension), Triton's repository and model configuration extensions, and our own
(upload, delete, a model's versions, the token check); the README's API table lists them. This
module speaks HTTP only and imports none of the server's layers (a contract in pyproject.toml), and
numpy only to run a model, so that the CLI starts and fails fast.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from gateway.admin_token import read_token_file, token_file
from gateway.errors import GatewayError
from gateway.settings import ENV_PREFIX, default_admin_token_dir

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ADMIN_TOKEN_VARIABLE",
    "DEFAULT_SERVER",
    "SERVER_VARIABLE",
    "AdminTokenSource",
    "ClientError",
    "GatewayClient",
    "InferResult",
    "OutputTensor",
    "base_url",
    "is_loopback",
    "local_token_file",
    "resolve_token",
    "server_port",
]

#: The gateway the CLI talks to when neither --server nor GATEWAY_SERVER says otherwise.
DEFAULT_SERVER = "http://127.0.0.1:8000"
#: The variable naming the gateway's base URL for every verb (``--server`` wins over it).
SERVER_VARIABLE = f"{ENV_PREFIX}SERVER"
#: The variable holding the admin token (``--token`` wins over it, it wins over the token file).
ADMIN_TOKEN_VARIABLE = f"{ENV_PREFIX}ADMIN_TOKEN"
#: Seconds a request other than an upload may take.
DEFAULT_TIMEOUT_SECONDS = 30.0
#: Seconds an upload may take (a large model over a slow link).
UPLOAD_TIMEOUT_SECONDS = 600.0
#: The next step when a gateway on this machine cannot be reached.
START_HINT = "is `gateway serve` running? (bash scripts/serve.sh)"

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}

_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")


class ClientError(Exception):
    """A call to the gateway failed; the message is one line saying what failed and what to do next.

    Attributes:
        status: the HTTP status the gateway answered, or None when it was not reached.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AdminTokenSource:
    """An admin token and where it was found: ``--token``, ``GATEWAY_ADMIN_TOKEN`` or a token file."""

    value: str
    origin: str


@dataclass(frozen=True)
class OutputTensor:
    """One output of an inference: name, v2 datatype and the values (BYTES: an object array of bytes)."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True)
class InferResult:
    """An inference answer: the model and version that answered, and the outputs in the model's order."""

    model_name: str
    model_version: str
    outputs: list[OutputTensor]


def base_url(server: str) -> str:
    """``server`` as a base URL: ``http://`` added when it names no scheme (``localhost:8000``), no final ``/``."""
    server = server.strip().rstrip("/")
    return server if "://" in server else f"http://{server}"


def is_loopback(server: str) -> bool:
    """Whether the URL ``server`` names this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(base_url(server)).hostname or ""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_port(server: str) -> int:
    """The TCP port of the URL ``server`` (80 or 443 when it names none)."""
    parts = urlsplit(base_url(server))
    return parts.port or (443 if parts.scheme == "https" else 80)


def local_token_file(server: str, http_port: int | None = None) -> Path | None:
    """The file a gateway on this machine serving ``server`` writes its generated admin token to.

    Args:
        server: the gateway's base URL.
        http_port: the server's HTTP port, when it differs from the URL's (default: the URL's port).

    Returns:
        ``<admin token dir>/admin-token-<port>`` (see :func:`gateway.admin_token.token_file`), or
        None when ``server`` is not on this machine.
    """
    if not is_loopback(server):
        return None
    return token_file(default_admin_token_dir(), http_port or server_port(server))


def resolve_token(server: str, token: str | None, http_port: int | None = None) -> AdminTokenSource:
    """The admin token: ``token``, else ``$GATEWAY_ADMIN_TOKEN``, else the token file of a gateway on this machine.

    Args:
        server: the gateway's base URL.
        token: the token given (``--token``), if any.
        http_port: the server's HTTP port, when it differs from the URL's (it names the token file).

    Raises:
        ClientError: none was found; the message says where a token comes from.
    """
    if token:
        return AdminTokenSource(token, "--token")
    from_environment = os.environ.get(ADMIN_TOKEN_VARIABLE)
    if from_environment:
        return AdminTokenSource(from_environment, ADMIN_TOKEN_VARIABLE)
    path = local_token_file(server, http_port)
    if path is not None:
        found = read_token_file(path)
        if found:
            return AdminTokenSource(found, f"the token file {path}")
        raise ClientError(
            f"no admin token: give --token or set {ADMIN_TOKEN_VARIABLE}; a gateway started on this machine "
            f"without --admin-token writes its token to {path}, which does not exist: {START_HINT}"
        )
    raise ClientError(
        f"no admin token for {server}: give --token or set {ADMIN_TOKEN_VARIABLE} to the token the server "
        "was started with (its --admin-token)"
    )


def _refused_token_hint(server: str, source: AdminTokenSource) -> str:
    """What to do when the gateway refused the token from ``source``."""
    path = local_token_file(server)
    if path is None:
        return f"give the server's --admin-token with --token or {ADMIN_TOKEN_VARIABLE}"
    if source.origin.startswith("the token file"):
        return (
            f"the gateway now on port {server_port(server)} did not write that file (it was started with "
            "--admin-token, or the file was left behind): give its token with --token"
        )
    exists = "exists" if path.exists() else "does not exist"
    instead = "leave out --token" if source.origin == "--token" else f"unset {ADMIN_TOKEN_VARIABLE}"
    return (
        f"a gateway started here without --admin-token writes its token to {path} ({exists}): "
        f'give --token "$(cat {path})", or {instead} so that the file is read'
    )


class GatewayClient:
    """Calls to one gateway's REST API, each answering data or raising :class:`ClientError`.

    Args:
        server: the gateway's base URL, e.g. ``http://127.0.0.1:8000``.
        token: the admin token for the management calls (as given, or already resolved); None:
            found by :func:`resolve_token` on the first management call.
        timeout_seconds: how long a request other than an upload may take.
    """

    def __init__(
        self,
        server: str,
        token: str | AdminTokenSource | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.server = base_url(server)
        self._given_token = token if isinstance(token, str) else None
        self._token = token if isinstance(token, AdminTokenSource) else None
        self._timeout = timeout_seconds
        # Certificates are verified over https; plain http has none, and skipping the CA bundle saves
        # about 0.1 s per command (redirects, to https or elsewhere, are not followed).
        https = self.server.startswith("https://")
        self._http = httpx.Client(base_url=self.server, timeout=timeout_seconds, verify=https)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    @property
    def token(self) -> AdminTokenSource:
        """The admin token the management calls send (found on first use).

        Raises:
            ClientError: no token was given or found.
        """
        if self._token is None:
            self._token = resolve_token(self.server, self._given_token)
        return self._token

    # ------------------------------------------------------------------ open calls

    def server_metadata(self) -> dict[str, Any]:
        """``GET /v2``: the server's name, version and extensions (KServe v2 "Server Metadata")."""
        return self._object(self._call("GET", "/v2", what="reading the server metadata"), "server metadata")

    def index(self) -> list[dict[str, Any]]:
        """``POST /v2/repository/index``: every model with each version's state, and why when it is not ready
        or its resident bytes (``resident_bytes``) when it is."""
        return self._list(self._call("POST", "/v2/repository/index", what="listing the models", json={}), "the index")

    def model_versions(self, name: str) -> list[dict[str, Any]]:
        """``GET /v2/repository/models/{m}``: the model's index entries and every version folder on disk.

        Raises:
            ClientError: unknown model (status 404), or the call failed.
        """
        what = f"reading the versions of model '{name}'"
        return self._list(self._call("GET", f"/v2/repository/models/{_segment(name)}", what=what, model=name), what)

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{m}[/versions/{v}]``: platform, inputs and outputs (datatype, shape), parameters."""
        what = f"reading model '{name}'"
        response = self._call("GET", _model_path(name, version), what=what, model=name, version=version)
        return self._object(response, what)

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{m}[/versions/{v}]/config``: the served configuration in Triton's ModelConfig JSON."""
        what = f"reading the configuration of model '{name}'"
        path = f"{_model_path(name, version)}/config"
        return self._object(self._call("GET", path, what=what, model=name, version=version), what)

    def infer(self, name: str, inputs: Mapping[str, np.ndarray], version: str | None = None) -> InferResult:
        """``POST /v2/models/{m}[/versions/{v}]/infer`` with Triton's binary tensor data extension.

        Args:
            name, version: the model (version None: the highest ready one).
            inputs: one array per input name, each of the dtype of the model's datatype (numpy
                str or bytes arrays for BYTES), batch first when the model batches.

        Returns:
            Every output of the model, as arrays of the datatypes the server answered.

        Raises:
            ClientError: the gateway refused the request (its message says which input and why), or
                could not be reached.
        """
        from gateway.datatypes import INFERENCE_HEADER_LENGTH, array_to_raw, v2_datatype

        described, raw = [], []
        for input_name, array in inputs.items():
            data = array_to_raw(array)
            raw.append(data)
            described.append(
                {
                    "name": input_name,
                    "shape": list(array.shape),
                    "datatype": v2_datatype(array.dtype),
                    "parameters": {"binary_data_size": len(data)},
                }
            )
        header = json.dumps({"inputs": described, "parameters": {"binary_data_output": True}}).encode()
        what = f"running model '{name}'"
        response = self._call(
            "POST",
            f"{_model_path(name, version)}/infer",
            what=what,
            model=name,
            version=version,
            content=header + b"".join(raw),
            headers={"Content-Type": "application/octet-stream", INFERENCE_HEADER_LENGTH: str(len(header))},
        )
        return self._infer_result(response, what)

    # ------------------------------------------------------------------ management calls (admin token)

    def check_token(self) -> None:
        """``GET /v2/repository/token``: whether the gateway accepts the admin token; changes nothing.

        Raises:
            ClientError: the gateway refused the token (status 401, with where the right one is), or
                could not be reached.
        """
        self._call("GET", "/v2/repository/token", what="checking the admin token", admin=True, ok=(204,))

    def load(self, name: str) -> None:
        """``POST /v2/repository/models/{m}/load`` (explicit model control mode)."""
        path = f"/v2/repository/models/{_segment(name)}/load"
        self._call("POST", path, what=f"loading model '{name}'", admin=True, model=name)

    def unload(self, name: str) -> None:
        """``POST /v2/repository/models/{m}/unload`` (explicit model control mode)."""
        path = f"/v2/repository/models/{_segment(name)}/unload"
        self._call("POST", path, what=f"unloading model '{name}'", admin=True, model=name)

    def delete(self, name: str, version: str | None = None) -> list[str]:
        """``DELETE /v2/repository/models/{m}[/versions/{v}]``: stop serving and remove the files.

        Returns:
            The versions deleted.
        """
        path = f"/v2/repository/models/{_segment(name)}"
        what = f"deleting model '{name}'"
        if version is not None:
            path, what = f"{path}/versions/{_segment(version)}", f"deleting version {version} of model '{name}'"
        answer = self._object(self._call("DELETE", path, what=what, admin=True, model=name, version=version), what)
        return [str(deleted) for deleted in answer.get("versions", [])]

    def traffic(self, name: str) -> dict[str, Any]:
        """``GET /v2/repository/models/{m}/traffic``: the model's version labels, routing and shadow."""
        what = f"reading the traffic policy of model '{name}'"
        path = f"/v2/repository/models/{_segment(name)}/traffic"
        return self._object(self._call("GET", path, what=what, model=name), what)

    def set_traffic(self, name: str, policy: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /v2/repository/models/{m}/traffic``: replace the model's traffic policy; the new one."""
        what = f"setting the traffic policy of model '{name}'"
        path = f"/v2/repository/models/{_segment(name)}/traffic"
        return self._object(self._call("PUT", path, what=what, admin=True, model=name, json=dict(policy)), what)

    def promote(self, name: str, to: str | None = None) -> dict[str, Any]:
        """``POST /v2/repository/models/{m}/promote``: move the ``stable`` label to ``to`` (default: canary's version).

        Returns:
            ``{"name", "stable", "previous_stable", "drained"}``.
        """
        what = f"promoting model '{name}'" + (f" to {to}" if to else "")
        path = f"/v2/repository/models/{_segment(name)}/promote"
        body = {"to": to} if to else {}
        return self._object(self._call("POST", path, what=what, admin=True, model=name, json=body), what)

    def rollback(self, name: str) -> dict[str, Any]:
        """``POST /v2/repository/models/{m}/rollback``: move ``stable`` back to where the last promote found it."""
        what = f"rolling back model '{name}'"
        path = f"/v2/repository/models/{_segment(name)}/rollback"
        return self._object(self._call("POST", path, what=what, admin=True, model=name), what)

    def upload(self, package: Path, name: str, version: int | None) -> dict[str, Any]:
        """Upload a model package (tar.gz of a version folder) as ``version``, or as the next version.

        ``PUT /v2/repository/models/{m}/versions/{v}``, or ``POST .../versions`` for the next one.

        Returns:
            The server's answer: ``{"name", "version", "ready"}``.
        """
        base = f"/v2/repository/models/{_segment(name)}/versions"
        method, path = ("PUT", f"{base}/{version}") if version is not None else ("POST", base)
        what = f"uploading model '{name}'"
        with package.open("rb") as body:
            response = self._call(
                method,
                path,
                what=what,
                admin=True,
                ok=(201,),
                content=body,
                headers={"Content-Type": "application/gzip"},
                timeout=UPLOAD_TIMEOUT_SECONDS,
            )
        return self._object(response, what)

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this gateway."""
        return f"{self.server}{path}"

    # ------------------------------------------------------------------ requests and their failures

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        admin: bool = False,
        model: str | None = None,
        version: str | None = None,
        ok: tuple[int, ...] = (200,),
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **content: Any,
    ) -> httpx.Response:
        """Send one request; a refusal or a transport failure becomes a :class:`ClientError`.

        ``what`` names the call in messages; ``model`` and ``version``, when the call is about one,
        choose the next step a 404 or 503 suggests.
        """
        sent_headers = dict(headers or {})
        if admin:
            sent_headers["Authorization"] = f"Bearer {self.token.value}"
        try:
            response = self._http.request(
                method, path, headers=sent_headers, timeout=timeout or self._timeout, **content
            )
        except httpx.ConnectError as error:
            raise ClientError(self._unreachable(error)) from None
        except httpx.TimeoutException:
            raise ClientError(
                f"{what}: {self.server} did not answer within {timeout or self._timeout:g} s; is it overloaded?"
            ) from None
        except httpx.HTTPError as error:
            raise ClientError(f"{what}: the request to {self.url(path)} failed: {error}") from None
        if response.status_code not in ok:
            raise self._refused(response, what, admin, model, version)
        return response

    def _unreachable(self, error: httpx.ConnectError) -> str:
        reason = _ERRNO_PREFIX.sub("", str(error)) or type(error).__name__
        reason = reason[:1].lower() + reason[1:]
        hint = START_HINT if is_loopback(self.server) else f"check --server or {SERVER_VARIABLE}"
        return f"cannot reach {self.server}: {reason}; {hint}"

    def _refused(
        self, response: httpx.Response, what: str, admin: bool, model: str | None, version: str | None
    ) -> ClientError:
        status = response.status_code
        message = _error_message(response)
        text = f"{what} failed ({status}): {message}"
        if status == 401 and admin:
            text += f"; the gateway refused the admin token from {self.token.origin}: "
            text += _refused_token_hint(self.server, self.token)
        elif status == 404 and model is not None and message.endswith("is not loaded"):
            text += f"; `gateway load {model} --server {self.server}` loads it (explicit model control mode)"
        elif status == 404 and model is not None and version is not None:
            text += f"; `gateway status {model} --server {self.server}` lists its versions"
        elif status == 404 and model is not None:
            text += f"; `gateway models --server {self.server}` lists the models"
        elif status == 503 and model is not None:
            text += f"; `gateway status {model} --server {self.server}` shows each version's state"
        return ClientError(text, status)

    def _object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        """The answer's JSON object, or a :class:`ClientError` saying the answer is not the gateway's."""
        answer = self._decoded(response)
        if not isinstance(answer, dict):
            raise self._not_the_gateway(response, what)
        return answer

    def _list(self, response: httpx.Response, what: str) -> list[dict[str, Any]]:
        """The answer's JSON list of objects, or a :class:`ClientError` saying the answer is not the gateway's."""
        answer = self._decoded(response)
        if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
            raise self._not_the_gateway(response, what)
        return answer

    @staticmethod
    def _decoded(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _not_the_gateway(self, response: httpx.Response, what: str) -> ClientError:
        return ClientError(
            f"{what}: {self.server} did not answer with the gateway's JSON; is --server the gateway's HTTP port?",
            response.status_code,
        )

    def _infer_result(self, response: httpx.Response, what: str) -> InferResult:
        """Decode an inference answer: JSON, or JSON then raw output data (binary tensor data extension)."""
        import numpy as np

        from gateway.datatypes import INFERENCE_HEADER_LENGTH, array_from_raw, numpy_dtype

        body = response.content
        json_length = response.headers.get(INFERENCE_HEADER_LENGTH)
        try:
            length = int(json_length) if json_length is not None else len(body)
            answer = json.loads(body[:length])
            outputs, offset = [], length
            for output in answer["outputs"]:
                datatype, shape = output["datatype"], output["shape"]
                size = output.get("parameters", {}).get("binary_data_size")
                if size is None:
                    array = np.asarray(output["data"], dtype=numpy_dtype(datatype)).reshape(shape)
                else:
                    array = array_from_raw(body[offset : offset + size], datatype, shape, output["name"])
                    offset += size
                outputs.append(OutputTensor(output["name"], datatype, array))
            return InferResult(answer["model_name"], str(answer["model_version"]), outputs)
        except (ValueError, KeyError, TypeError, GatewayError) as error:
            raise ClientError(f"{what}: the answer of {self.server} does not decode: {error}") from None


def _segment(value: str) -> str:
    """``value`` as one URL path segment (percent-encoded)."""
    return quote(value, safe="")


def _model_path(name: str, version: str | None) -> str:
    path = f"/v2/models/{_segment(name)}"
    return f"{path}/versions/{_segment(version)}" if version is not None else path


def _error_message(response: httpx.Response) -> str:
    """The gateway's ``{"error": message}``, else the first line of the body, else the status phrase."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return str(answer["error"])
    first_line = response.text.strip().splitlines()[0][:300] if response.text.strip() else ""
    return first_line or response.reason_phrase
