"""The ``gateway`` verbs against real gateway processes, run in-process with typer's CliRunner.

Every verb is run for success and for the common failures (unknown model, server down, wrong token);
a failure must exit with status 1 and one line on stderr that says what to do next. ``gateway push``
must fail before converting anything, in under a second; ``--help`` must read whole at 80 columns.
The CLI imports no gRPC module, so it can share the test process with tritonclient.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from gateway.cli import app
from gateway.repository.packages import pack_version
from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN, REPO_ROOT, GatewayProcess, free_port, start_gateway

#: The environment of every in-process run: no token or server from the caller's environment.
CLEAN = {"GATEWAY_ADMIN_TOKEN": None, "GATEWAY_SERVER": None, "COLUMNS": "200"}


def gateway_cli(*args: str, env: dict[str, str | None] | None = None, stdin: str | None = None) -> Result:
    """Run ``gateway ARGS`` in this process; stdout and stderr apart."""
    return CliRunner().invoke(app, list(args), env={**CLEAN, **(env or {})}, input=stdin)


def succeeds(*args: str, env: dict[str, str | None] | None = None) -> str:
    result = gateway_cli(*args, env=env)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.stdout


def fails(*args: str, expected: tuple[str, ...], env: dict[str, str | None] | None = None) -> str:
    """Run a verb that must fail: status 1, nothing on stdout but with --json, one ``error:`` line on stderr."""
    result = gateway_cli(*args, env=env)
    assert result.exit_code == 1, (args, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
    for text in expected:
        assert text in lines[0], (args, text, lines[0])
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def as_json(*args: str, env: dict[str, str | None] | None = None) -> Any:
    return json.loads(succeeds(*args, "--json", env=env))


# ----------------------------------------------------------------------------- help at 80 columns

BOX = "│╭╮╰╯─"


def _words(text: str) -> list[str]:
    """The words of a help text as the terminal shows them (Markdown's backticks are not shown)."""
    return [word for word in text.replace("`", "").split() if word]


def _help_texts(command: Any) -> list[str]:
    texts = [command.help or "", command.epilog or ""]
    return texts + [getattr(param, "help", None) or "" for param in command.params]


def test_every_help_reads_whole_at_80_columns():
    root = typer.main.get_command(app)
    commands: dict[str, Any] = {"": root, **root.commands}  # type: ignore[attr-defined]
    assert set(commands) >= {"", "serve", "push", "models", "status", "predict", "load", "unload", "delete", "token"}
    for name, command in commands.items():
        result = CliRunner().invoke(app, [*([name] if name else []), "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        shown = result.stdout
        assert max(len(line) for line in shown.splitlines()) <= 80, (name, shown)
        assert "…" not in shown, (name, shown)  # rich's ellipsis: something was cut
        tokens = set(shown.translate({ord(c): " " for c in BOX}).split())
        for param in command.params:
            for flag in getattr(param, "opts", []):
                if flag.startswith("-"):
                    assert flag in tokens, (name, flag)
        variables = {
            variable
            for param in command.params
            for variable in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
        }
        for text in _help_texts(command):
            variables |= set(re.findall(r"GATEWAY_[A-Z_]*[A-Z]", text))
            for word in _words(text):  # a word cut or folded would not show whole
                assert word in tokens, (name, word, shown)
        joined = " ".join(tokens)
        for variable in variables:
            assert re.search(rf"(?<![A-Z_]){variable}(?![A-Z_])", joined), (name, variable, shown)
    # serve lists the variable of each of its options, in its epilog
    assert (
        "GATEWAY_REPOSITORY_POLL_SECONDS" in CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "80"}).stdout
    )


# ----------------------------------------------------------------------------- reading: models, status, predict


def test_models_and_status_show_states_backends_bytes_and_reasons(gateway: GatewayProcess):
    server = ("--server", gateway.http_url)
    listed = {model["name"]: model for model in as_json("models", *server)}
    digits = listed["digits"]
    version_files = (gateway.repository / "digits" / "1").rglob("*")
    assert digits["state"] == "READY" and digits["backend"] == "onnxruntime"
    assert digits["platform"] == "onnxruntime_onnx"
    assert digits["model_bytes"] == sum(path.stat().st_size for path in version_files if path.is_file())
    assert digits["parity"] is None
    assert [entry["version"] for entry in digits["versions"]] == ["1"]
    assert listed["corrupt"]["state"] == "UNAVAILABLE" and listed["corrupt"]["backend"] is None
    assert listed["broken_config"]["state"] == "UNAVAILABLE"
    table = succeeds("models", *server)
    row = r"^digits\s+1\s+READY\s+onnxruntime\s+none\s+\d+\.\d kB\s+\d+\.\d MB\s*$"  # bytes on disk, in memory
    assert re.search(row, table, re.MULTILINE), table
    assert "gateway status" in table  # where to look for the reasons

    status = as_json("status", "digits", *server)
    [version] = status["versions"]
    assert version.pop("resident_bytes") >= digits["model_bytes"]  # measured at load, never below its files
    assert version == {"name": "digits", "version": "1", "state": "READY", "reason": ""}
    assert status["metadata"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert status["config"]["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    shown = succeeds("status", "digits", *server)
    assert re.search(r"^1\s+READY\s+\d+\.\d MB\s*$", shown, re.MULTILINE), shown  # the version's memory
    for expected in ("READY", "input", "[-1, 64]", "logits", "latest 1", "max_batch_size", "1 x KIND_CPU"):
        assert expected in shown, (expected, shown)

    corrupt = succeeds("status", "corrupt", *server)
    assert "UNAVAILABLE" in corrupt and "cannot load model.onnx" in corrupt and "no version is serving" in corrupt
    fails("status", "nope", *server, expected=("(404)", "no model 'nope'", "gateway models"))
    fails("models", "--server", f"http://127.0.0.1:{free_port()}", expected=("cannot reach", "gateway serve"))


def test_the_model_configuration_extension_answers_tritons_model_config(gateway: GatewayProcess):
    config = gateway.http.get("/v2/models/digits_cuda_first/config").json()
    assert config == {
        "name": "digits_cuda_first",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 64,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}],
        "instance_group": [{"name": "digits_cuda_first", "kind": "KIND_CPU", "count": 1}],
    }
    assert gateway.http.get("/v2/models/digits_cuda_first/versions/1/config").json() == config
    by_type = gateway.http.get("/v2/models/identity_bytes/config").json()
    assert by_type["input"] == [{"name": "input", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert gateway.http.get("/v2/models/nope/config").status_code == 404
    assert gateway.http.get("/v2/models/corrupt/config").status_code == 503
    assert "model_configuration" in gateway.http.get("/v2").json()["extensions"]


def test_predict_reads_npy_npz_and_json_and_shows_the_best_classes(gateway: GatewayProcess, digits_split, tmp_path):
    _, x_test, _, y_test = digits_split
    server = ("--server", gateway.http_url)
    images = x_test[:32].astype(np.float64)  # cast to FP32 by predict
    np.save(tmp_path / "digits.npy", images)
    answer = as_json("predict", "digits", "--input", str(tmp_path / "digits.npy"), "--top", "3", *server)
    (logits,) = answer["outputs"]
    assert (logits["name"], logits["datatype"], logits["shape"]) == ("logits", "FP32", [32, 10])
    served = np.asarray(logits["data"], dtype=np.float32)
    direct = gateway.http.post(
        "/v2/models/digits/infer",
        json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [32, 64], "data": x_test[:32].ravel().tolist()}]
        },
    ).json()["outputs"][0]["data"]
    np.testing.assert_array_equal(served.ravel(), np.asarray(direct, dtype=np.float32))
    best = [row[0]["class"] for row in answer["top"]["logits"]]
    assert best == served.argmax(axis=1).tolist() and np.mean(np.array(best) == y_test[:32]) > 0.9
    assert all(
        len(row) == 3 and row[0]["score"] >= row[1]["score"] >= row[2]["score"] for row in answer["top"]["logits"]
    )

    np.save(tmp_path / "one.npy", images[0])  # no batch dim: one is added
    shown = succeeds("predict", "digits", "--input", str(tmp_path / "one.npy"), "--top", "1", *server)
    assert "logits  FP32  [1, 10]" in shown and f"row 0: best classes {best[0]} (" in shown
    np.savez(tmp_path / "digits.npz", input=images[:2])
    (tmp_path / "digits.json").write_text(json.dumps({"input": images[:2].tolist()}))
    v2_body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": images[:2].ravel().tolist()}]}
    (tmp_path / "v2.json").write_text(json.dumps(v2_body))
    for file in ("digits.npz", "digits.json", "v2.json"):
        answer = as_json("predict", "digits", "--input", str(tmp_path / file), *server)
        np.testing.assert_array_equal(np.asarray(answer["outputs"][0]["data"], dtype=np.float32), served[:2])

    (tmp_path / "words.json").write_text(json.dumps({"input": [["hello", "wörld"]]}))
    words = as_json("predict", "identity_bytes", "--input", str(tmp_path / "words.json"), *server)
    assert words["outputs"][0]["data"] == [["hello", "wörld"]]
    (tmp_path / "fractions.json").write_text(json.dumps({"input": [[0.5, 1.5]]}))
    fails(
        "predict", "identity_int32", "--input", str(tmp_path / "fractions.json"), *server,
        expected=("input 'input' is INT32", "float64"),
    )  # fmt: skip
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3)))
    fails(
        "predict", "digits", "--input", str(tmp_path / "wrong.npy"), *server, expected=("(400)", "[2, 3]", "[-1, 64]")
    )
    fails("predict", "nope", "--input", str(tmp_path / "one.npy"), *server, expected=("(404)", "unknown model 'nope'"))
    fails(
        "predict", "identity_int32", "--input", str(tmp_path / "words.json"), "--top", "2", *server,
        expected=("input 'input' is INT32",),
    )  # fmt: skip


# ----------------------------------------------------------------------------- management: load, unload, delete


@pytest.fixture
def explicit_gateway(tmp_path: Path, digits_source: Path) -> Iterator[GatewayProcess]:
    repository = tmp_path / "repository"
    shutil.copytree(digits_source, repository / "digits")
    server = start_gateway(repository, tmp_path / "gateway.log", "--model-control-mode", "explicit")
    yield server
    server.stop()


def test_load_unload_and_delete(explicit_gateway: GatewayProcess, gateway: GatewayProcess, digits_source, tmp_path):
    server, token = ("--server", explicit_gateway.http_url), ("--token", ADMIN_TOKEN)
    loaded = succeeds("load", "digits", *server, *token)
    assert "model digits loaded" in loaded and "version 1 READY" in loaded
    assert explicit_gateway.http.get("/v2/models/digits/ready").status_code == 200
    refused = fails("load", "digits", *server, "--token", "wrong", expected=("(401)", "invalid admin token"))
    assert "--token" in refused
    no_file = {"GATEWAY_ADMIN_TOKEN_DIR": str(tmp_path / "no-tokens")}  # the server was given its token
    fails("load", "digits", *server, env=no_file, expected=("no admin token", "GATEWAY_ADMIN_TOKEN", "does not exist"))
    fails("load", "nope", *server, *token, expected=("(404)", "no model 'nope'"))
    fails(
        "unload", "digits", "--server", gateway.http_url, *token,
        expected=("(400)", "model control mode 'none'", "--model-control-mode explicit"),
    )  # fmt: skip

    # delete one version: the one before it serves again, its files are gone, the staging area is empty
    package = tmp_path / "package.tar.gz"
    pack_version(digits_source / "1", package)
    uploaded = explicit_gateway.http.put(
        "/v2/repository/models/digits/versions/2", content=package.read_bytes(), headers=ADMIN_HEADERS
    )
    assert uploaded.status_code == 201, uploaded.text
    assert explicit_gateway.http.get("/v2/models/digits").json()["versions"] == ["2"]
    versions = explicit_gateway.http.get("/v2/repository/models/digits").json()
    assert [(entry["version"], entry["state"]) for entry in versions] == [("1", "UNAVAILABLE"), ("2", "READY")]
    assert "version policy" in versions[0]["reason"]
    unanswered = gateway_cli("delete", "digits:2", *server, *token)  # nobody answers the question
    assert unanswered.exit_code == 1 and "nothing deleted" in unanswered.stderr and "--yes" in unanswered.stderr
    assert (explicit_gateway.repository / "digits" / "2").is_dir()
    answer = as_json("delete", "digits:2", "--yes", *server, *token)
    assert answer == {"name": "digits", "deleted_versions": ["2"]}
    assert not (explicit_gateway.repository / "digits" / "2").exists()
    assert explicit_gateway.http.get("/v2/models/digits").json()["versions"] == ["1"]
    assert explicit_gateway.http.post("/v2/models/digits/versions/2/infer", json={}).status_code == 404
    fails("delete", "digits:7", "--yes", *server, *token, expected=("(404)", "no version 7", "versions on disk: 1"))
    fails("delete", "digits:x", "--yes", *server, *token, expected=("MODEL:VERSION",))

    unloaded = succeeds("unload", "digits", *server, *token)
    assert "model digits unloaded" in unloaded
    assert explicit_gateway.http.get("/v2/models/digits/ready").status_code == 404
    # a whole model, after a yes to the question
    result = gateway_cli("delete", "digits", *server, *token, stdin="y\n")
    assert result.exit_code == 0, result.stderr
    assert "Delete model digits and every version of it" in result.stderr
    assert "deleted model digits and every version of it" in result.stdout
    assert not (explicit_gateway.repository / "digits").exists()
    assert not any((explicit_gateway.repository / ".staging").iterdir())
    assert explicit_gateway.http.post("/v2/repository/index").json() == []
    fails("delete", "digits", "--yes", *server, *token, expected=("(404)", "no model 'digits'"))


def test_the_delete_routes_refuse_without_a_token_and_bad_versions(explicit_gateway: GatewayProcess):
    http = explicit_gateway.http
    assert http.delete("/v2/repository/models/digits").status_code == 401
    assert http.delete("/v2/repository/models/digits", headers={"authorization": "Bearer nope"}).status_code == 401
    assert http.delete("/v2/repository/models/digits/versions/x", headers=ADMIN_HEADERS).status_code == 400
    assert http.delete("/v2/repository/models/nope", headers=ADMIN_HEADERS).status_code == 404
    assert (explicit_gateway.repository / "digits" / "1" / "model.onnx").is_file()
    assert http.get("/v2/repository/token", headers=ADMIN_HEADERS).status_code == 204
    assert http.get("/v2/repository/token").status_code == 401
    assert http.get("/v2/repository/models/nope").status_code == 404
    assert http.get("/v2/repository/models/digits").json() == [
        {"name": "digits", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"}
    ]
    # A deleted version stops serving even when the version left fails to load in its place.
    assert http.post("/v2/repository/models/digits/load", headers=ADMIN_HEADERS).status_code == 200
    package = explicit_gateway.repository.parent / "package.tar.gz"
    pack_version(explicit_gateway.repository / "digits" / "1", package)
    response = http.put("/v2/repository/models/digits/versions/2", content=package.read_bytes(), headers=ADMIN_HEADERS)
    assert response.status_code == 201, response.text
    (explicit_gateway.repository / "digits" / "1" / "model.onnx").write_bytes(b"no longer a model")
    assert http.delete("/v2/repository/models/digits/versions/2", headers=ADMIN_HEADERS).json()["versions"] == ["2"]
    assert http.get("/v2/models/digits/versions/2/ready").status_code == 404
    refused = http.post("/v2/models/digits/infer", json={"inputs": []})
    assert refused.status_code == 503 and "version 1" in refused.json()["error"], refused.text


def test_every_verb_says_when_the_server_is_down(tmp_path):
    server = ("--server", f"http://127.0.0.1:{free_port()}")
    np.save(tmp_path / "x.npy", np.zeros((1, 64)))
    for verb in (["models"], ["status", "digits"], ["predict", "digits", "--input", str(tmp_path / "x.npy")]):
        fails(*verb, *server, expected=("cannot reach http://127.0.0.1:", "connection refused", "gateway serve"))
    for verb in (["load", "digits"], ["unload", "digits"], ["delete", "digits", "--yes"], ["token"]):
        fails(*verb, *server, "--token", "t", expected=("cannot reach", "gateway serve"))


def test_token_says_where_the_generated_token_is(tmp_path: Path, digits_source: Path):
    token_dir = tmp_path / "tokens"
    server = start_gateway(
        tmp_path / "repository",
        tmp_path / "gateway.log",
        env={"GATEWAY_ADMIN_TOKEN_DIR": str(token_dir)},
        admin_token=None,
    )
    env: dict[str, str | None] = {"GATEWAY_ADMIN_TOKEN_DIR": str(token_dir), "GATEWAY_SERVER": server.http_url}
    try:
        token_file = token_dir / f"admin-token-{server.http_port}"
        report = as_json("token", env=env)
        assert report["token_file"] == str(token_file) and report["token_file_exists"] is True
        assert report["token_from"] == f"the token file {token_file}" and report["accepted"] is True
        shown = succeeds("token", env=env)
        assert str(token_file) in shown and "Authorization: Bearer" in shown and "GATEWAY_ADMIN_TOKEN" in shown
        # a stale token in the environment: refused, and the message says where the right one is
        stale = {**env, "GATEWAY_ADMIN_TOKEN": "stale"}
        refused = fails("token", env=stale, expected=("(401)", "GATEWAY_ADMIN_TOKEN", str(token_file)))
        assert "unset GATEWAY_ADMIN_TOKEN" in refused
        fails("load", "digits", env=stale, expected=("(401)", str(token_file)))
        # push finds the same file, and reports a wrong one before converting
        fails("push", "model.onnx", "--name", "m", "--token", "wrong", env=env, expected=("(401)", str(token_file)))
    finally:
        server.stop()
    gone = gateway_cli("token", "--json", env=env)  # the server removed its file when it stopped
    assert gone.exit_code == 1 and json.loads(gone.stdout)["token_file_exists"] is False
    assert "does not exist" in gone.stderr and "gateway serve" in gone.stderr
    elsewhere = json.loads(gateway_cli("token", "--json", "--http-port", "9", env=env).stdout)
    assert elsewhere["token_file"] == str(token_dir / "admin-token-9")


# ----------------------------------------------------------------------------- push fails before converting


@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make loading or converting a model record the call and fail: a check that comes too late shows."""
    import converters.pipeline
    import converters.sources

    calls: list[str] = []

    def refuse(what: str) -> Any:
        def called(*args: Any, **kwargs: Any) -> Any:
            calls.append(what)
            raise AssertionError(f"{what} ran before the push was refused")

        return called

    monkeypatch.setattr(converters.sources, "load_source", refuse("load_source"))
    monkeypatch.setattr(converters.pipeline, "convert_model", refuse("convert_model"))
    return calls


def test_push_fails_in_under_a_second_without_converting(
    gateway: GatewayProcess, digits_source, no_conversion, tmp_path
):
    source = str(digits_source / "1" / "model.onnx")
    server, token = ("--server", gateway.http_url), ("--token", ADMIN_TOKEN)
    local = tmp_path / "local"
    (local / "m" / "3").mkdir(parents=True)
    cases = {
        "nowhere to push": ["--name", "m"],
        "not both": ["--name", "m", *server, "--repository", str(local)],
        "invalid model name": ["--name", "../escape", *server, *token],
        "positive integer": ["--name", "m", "--version", "0", *server, *token],
        "cannot reach": ["--name", "m", "--server", f"http://127.0.0.1:{free_port()}", *token],
        "invalid admin token": ["--name", "m", *server, "--token", "wrong"],
        "exists already on": ["--name", "digits", "--version", "1", *server, *token],
        "exists already in": ["--name", "m", "--version", "3", "--repository", str(local)],
        "no admin token": ["--name", "m", *server],
    }
    for expected, args in cases.items():
        started = time.monotonic()
        fails("push", source, *args, env={"GATEWAY_ADMIN_TOKEN_DIR": str(tmp_path / "no-tokens")}, expected=(expected,))
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, (expected, elapsed)
    assert no_conversion == []
    # the same checks let a good push through to the conversion
    result = gateway_cli("push", source, "--name", "m", "--version", "4", "--repository", str(local))
    assert no_conversion == ["load_source"], result.stderr


def test_push_answers_json_on_stdout(digits_source, tmp_path):
    source = str(digits_source / "1" / "model.onnx")
    pushed = as_json("push", source, "--name", "m", "--repository", str(tmp_path / "local"))
    assert pushed["name"] == "m" and pushed["version"] == 1 and pushed["ready"] is True
    assert pushed["backend"] == "onnxruntime" and pushed["parity"] is None and pushed["server"] is None
    assert pushed["inputs"] == [{"name": "input", "datatype": "FP32", "dims": ["batch", 64]}]
    assert (tmp_path / "local" / "m" / "1" / "model.onnx").is_file()


def test_a_refused_push_imports_neither_onnx_nor_the_converters():
    """What makes the checks fast: they run before the heavy imports (measured in a fresh interpreter)."""
    script = (
        "import sys\n"
        "from typer.main import get_command\n"
        "from gateway.cli import app\n"
        "status = get_command(app).main(['push', 'model.onnx', '--name', 'm'], standalone_mode=False)\n"
        "print(status, sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'converters.pipeline') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[0] == "1 []", (done.stdout, done.stderr)
    assert "nowhere to push" in done.stderr
