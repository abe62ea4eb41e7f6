"""TF Serving's ``models.config`` (``--model-config-file``): models served from their base paths.

The file is the protobuf text format of TF Serving's ``ModelServerConfig``
(tensorflow_serving/config/model_server_config.proto)::

    model_config_list {
      config {
        name: "half_plus_two"
        base_path: "/models/half_plus_two"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

It is parsed into the gateway's own subset of that message (``protos/tfserving/model_server_config.proto``),
which holds only what the gateway honours: ``name``, ``base_path`` (the folder of numbered version
folders, each a SavedModel in TF Serving's layout, or any artifact the gateway serves; a relative path
is taken from the working directory, as TF Serving does), ``model_platform`` (``tensorflow``, or empty
to tell the backend from the artifact), ``model_version_policy`` (``latest``, ``all``, ``specific``)
and ``version_labels``. Any other field (``logging_config``, ``custom_model_config``, ``model_type``...)
fails the parse with an error naming it: no setting is ignored silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format

from gateway.repository.config import AllPolicy, LatestPolicy, ModelConfig, SpecificPolicy, VersionPolicy
from gateway.repository.model_repository import ConfiguredModel
from gateway.repository.names import valid_model_name
from protos.tfserving import ModelServerConfig

#: How the models' settings are named in messages.
SOURCE = "models.config"
#: ``model_platform`` values -> the backend serving them (None: told from the artifact).
_PLATFORMS: dict[str, str | None] = {"": None, "tensorflow": "tensorflow"}


class ModelServerConfigError(ValueError):
    """``models.config`` cannot be read, does not parse, or sets something the gateway cannot honour."""


def read_model_server_config(path: Path) -> dict[str, ConfiguredModel]:
    """The models of TF Serving's ``models.config`` at ``path``, by name.

    Returns:
        Per model name, its base path and its settings (backend for ``model_platform: "tensorflow"``,
        version policy and version labels, where given).

    Raises:
        ModelServerConfigError: the file cannot be read; it does not parse (the message has the line,
            column and field, e.g. a field the gateway does not honour); a model without a name or
            base path, with an invalid or repeated name, a base path on object storage (``gs://``,
            ``s3://``...), another ``model_platform`` than ``tensorflow``, or an invalid version policy
            or label.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelServerConfigError(f"cannot read the model config file {path}: {error}") from None
    message = ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ModelServerConfigError(
            f"{path}: {error} (the gateway reads name, base_path, model_platform, model_version_policy and "
            "version_labels of each model_config_list config; other fields are not supported)"
        ) from None
    models: dict[str, ConfiguredModel] = {}
    for index, entry in enumerate(message.model_config_list.config):
        where = f"{path}: model_config_list config #{index + 1}"
        name = entry.name
        if not valid_model_name(name):
            raise ModelServerConfigError(f"{where}: name {name!r} is not a valid model name ([A-Za-z0-9_.-]+)")
        if name in models:
            raise ModelServerConfigError(f"{where}: model '{name}' is listed twice")
        models[name] = ConfiguredModel(
            path=_base_path(entry.base_path, f"{where} ('{name}')"),
            config=_model_config(entry, f"{where} ('{name}')"),
            source=SOURCE,
        )
    return models


def _base_path(base_path: str, where: str) -> Path:
    """The local folder of ``base_path``.

    Raises:
        ModelServerConfigError: no base path, or one on object storage.
    """
    if not base_path:
        raise ModelServerConfigError(f"{where}: base_path is required")
    if "://" in base_path:
        raise ModelServerConfigError(
            f"{where}: base_path {base_path!r} is on object storage, which the gateway does not read; "
            "give a local folder (e.g. a mounted volume)"
        )
    return Path(base_path).absolute()


def _model_config(entry: Any, where: str) -> ModelConfig:
    """The gateway's settings for one ``ModelConfig`` entry (only the fields it gives are set).

    Raises:
        ModelServerConfigError: an unknown ``model_platform``, an empty ``specific`` policy, or a bad label.
    """
    if entry.model_platform not in _PLATFORMS:
        raise ModelServerConfigError(
            f"{where}: model_platform {entry.model_platform!r} is not served; the gateway serves "
            '"tensorflow" (SavedModels), or leave it empty to tell the backend from each version\'s artifact'
        )
    fields: dict[str, Any] = {}
    backend = _PLATFORMS[entry.model_platform]
    if backend is not None:
        fields["backend"] = backend
    if entry.HasField("model_version_policy"):
        fields["version_policy"] = _version_policy(entry.model_version_policy, where)
    if entry.version_labels:
        fields["version_labels"] = dict(entry.version_labels)
    try:
        return ModelConfig(**fields)
    except ValueError as error:  # pydantic's ValidationError: a label that is a number, a negative version
        raise ModelServerConfigError(f"{where}: {error}") from None


def _version_policy(policy: Any, where: str) -> VersionPolicy:
    """TF Serving's ``ServableVersionPolicy`` as the gateway's (the same three choices; default latest 1).

    Raises:
        ModelServerConfigError: ``specific`` without versions.
    """
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(all=AllPolicy())
    if choice == "specific":
        if not policy.specific.versions:
            raise ModelServerConfigError(f"{where}: model_version_policy specific lists no versions")
        return VersionPolicy(specific=SpecificPolicy(versions=list(policy.specific.versions)))
    num_versions = policy.latest.num_versions if choice == "latest" else 0
    return VersionPolicy(latest=LatestPolicy(num_versions=num_versions or 1))
