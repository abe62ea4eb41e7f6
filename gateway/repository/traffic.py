"""A model's traffic policy as the management API sets it: ``<model folder>/traffic.json``.

The policy (version labels, the weighted split between them, the shadow copy; fields of
:class:`gateway.repository.config.TrafficConfig`) is first the model's config (``config.yaml``,
``config.pbtxt`` has none, TF Serving's ``models.config`` its labels). Once the management API
changes it (``PUT /v2/repository/models/{m}/traffic``, promote, rollback), the new policy is
written to ``traffic.json`` in the model folder, beside the version folders, and from then on
replaces the config's fields: every worker process and every restart reads the same policy. The
file is written whole (a temporary file renamed into place), so a reader sees the old policy or the
new one. Deleting the file gives the config's policy back at the next load.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import Field, ValidationError

from gateway.repository.config import ModelConfig, ModelConfigError, TrafficConfig, validation_problems

#: The management API's traffic policy in a model folder.
TRAFFIC_FILE = "traffic.json"
#: The label that promote moves and rollback moves back.
STABLE_LABEL = "stable"


class TrafficPolicy(TrafficConfig):
    """The traffic policy of a model in force: immutable, swapped whole when it changes.

    Attributes:
        previous_stable: the version the ``stable`` label named before the last promote (what a
            rollback moves it back to), or None.
    """

    previous_stable: int | None = Field(default=None, ge=0)

    @classmethod
    def of_config(cls, config: ModelConfig) -> TrafficPolicy:
        """The policy a model's config declares (its version labels, routing and shadow)."""
        return cls(version_labels=dict(config.version_labels), routing=config.routing, shadow=config.shadow)

    def to_json(self) -> dict[str, object]:
        """The policy as the management API shows it and ``traffic.json`` holds it."""
        return self.model_dump(mode="json", exclude_none=True)


def read_traffic_file(model_path: Path) -> TrafficPolicy | None:
    """The policy in ``<model_path>/traffic.json``, or None when there is no such file.

    Raises:
        ModelConfigError: the file is not JSON of a valid policy (the message names the field).
    """
    path = model_path / TRAFFIC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelConfigError(f"{TRAFFIC_FILE} cannot be read: {error}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelConfigError(f"{TRAFFIC_FILE} is not JSON: {error}") from None
    return parse_traffic_policy(raw, TRAFFIC_FILE)


def parse_traffic_policy(raw: object, source: str) -> TrafficPolicy:
    """The :class:`TrafficPolicy` of ``raw`` (JSON data), from ``source`` (for the message).

    Raises:
        ModelConfigError: not a valid policy; the message names each bad field and why.
    """
    try:
        return TrafficPolicy.model_validate(raw)
    except ValidationError as error:
        raise ModelConfigError(f"{source} is invalid: {validation_problems(error)}") from None


def write_traffic_file(model_path: Path, policy: TrafficPolicy) -> None:
    """Write ``policy`` to ``<model_path>/traffic.json`` in one rename (readers see the old file or the new).

    Raises:
        OSError: the folder cannot be written.
    """
    descriptor, temporary = tempfile.mkstemp(dir=model_path, prefix=".traffic-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(policy.to_json(), file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, model_path / TRAFFIC_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
