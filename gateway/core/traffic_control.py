"""The traffic management API: a model's traffic policy shown and set, promote, rollback.

Our extension of the repository API (REST only: neither KServe's nor Triton's gRPC API has a
traffic policy to follow), under ``/v2/repository/models/{m}/``: ``traffic`` (GET shows the policy,
PUT replaces it), ``promote`` and ``rollback`` (POST). Changes need the admin token.

A change is one swap of an immutable policy object (:meth:`ModelRepository.set_traffic_policy`):
a request is routed by the old policy or the new one, and none fails for the change. The policy is
written to the model's ``traffic.json`` first (:mod:`gateway.repository.traffic`), so a restart
keeps it, and with ``--workers`` every other worker reloads the model (its versions are kept as
loaded; the policy is read again) before the answer goes out. In a repository shared by replicas
(:mod:`gateway.repository.store`) the file is written to the store before the answer goes out, and
the other replicas take it at their next poll.

Promote moves the ``stable`` label to a version (by default the one the ``canary`` label names),
remembers where it was, and waits (up to ``drain_timeout_seconds``) until the requests queued or
running on the version it left have finished; that version's files stay, and it keeps serving
requests that name it. Rollback moves ``stable`` back to where the last promote found it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.admin_token import AdminToken
from gateway.errors import FailedPreconditionError, GatewayError, InvalidArgumentError
from gateway.repository.config import ModelConfigError
from gateway.repository.model_repository import ModelRepository
from gateway.repository.traffic import STABLE_LABEL, TrafficPolicy, parse_traffic_policy

logger = logging.getLogger(__name__)

#: The label promote takes the version from when no ``to`` is given.
CANARY_LABEL = "canary"
#: Seconds a promote waits by default for the requests of the version it left.
DEFAULT_DRAIN_TIMEOUT_SECONDS = 10.0


class TrafficControl:
    """Show and change the traffic policies of one repository's models.

    Args:
        repository: the model repository.
        admin_token: the token changes require.
        follow: an awaitable function spreading a change of a model's policy: every other worker
            reloads the model (the policy from its ``traffic.json``), and in a repository shared by
            replicas the file is written to the store, which the other replicas follow; None in a
            single process over a local repository.
    """

    def __init__(
        self,
        repository: ModelRepository,
        admin_token: AdminToken,
        follow: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.repository = repository
        self.admin_token = admin_token
        self._follow = follow

    def policy(self, name: str) -> dict[str, Any]:
        """The traffic policy in force for ``name`` as JSON (``version_labels``, ``routing``, ``shadow``,
        ``previous_stable``).

        Raises:
            NotFoundError: unknown or unloaded model.
        """
        return self.repository.traffic_policy(name).to_json()

    async def set_policy(self, name: str, policy: Any, authorization: str | None) -> dict[str, Any]:
        """Replace ``name``'s traffic policy with ``policy`` (JSON of :class:`TrafficPolicy`); the new one.

        Raises:
            UnauthenticatedError: no valid admin token.
            InvalidArgumentError: not a valid policy, or a label naming a version that is not served.
            NotFoundError: unknown or unloaded model.
            FailedPreconditionError: a configured model (models.config): its policy is its configuration's.
            UnavailableError: the policy cannot be written (here or to a shared repository), or another
                worker failed to follow.
        """
        self.admin_token.check(authorization)
        try:
            parsed = parse_traffic_policy(policy, f"the traffic policy for model '{name}'")
        except ModelConfigError as error:
            raise InvalidArgumentError(str(error)) from None
        await self._swap(name, parsed)
        return parsed.to_json()

    async def promote(
        self,
        name: str,
        to: str | None,
        authorization: str | None,
        drain_timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
    ) -> dict[str, Any]:
        """Move the ``stable`` label to the version ``to`` names (a version number or a label; default ``canary``).

        Returns:
            ``{"name", "stable", "previous_stable", "drained"}``: ``drained`` says whether the
            version ``stable`` left finished its queued and running requests within the timeout.

        Raises:
            UnauthenticatedError: no valid admin token.
            InvalidArgumentError: ``to`` is neither a served version nor a label of the model.
            NotFoundError, FailedPreconditionError, UnavailableError: as :meth:`set_policy`.
        """
        self.admin_token.check(authorization)
        current = self.repository.traffic_policy(name)
        target = to or CANARY_LABEL
        if target.isascii() and target.isdigit():
            version = int(target)
        elif target in current.version_labels:
            version = current.version_labels[target]
        else:
            known = ", ".join(sorted(current.version_labels)) or "none"
            raise InvalidArgumentError(
                f"cannot promote model '{name}' to '{target}': neither a version number nor one of its labels ({known})"
            )
        left = current.version_labels.get(STABLE_LABEL)
        if left == version:
            return self._promotion(name, current, drained=True)
        updated = current.model_copy(
            update={"version_labels": {**current.version_labels, STABLE_LABEL: version}, "previous_stable": left}
        )
        await self._swap(name, TrafficPolicy.model_validate(updated.model_dump()))
        drained = True if left is None else await self._drain(name, left, updated, drain_timeout_seconds)
        logger.info("model %s: stable label promoted from version %s to %d", name, left, version)
        return self._promotion(name, updated, drained)

    async def rollback(
        self, name: str, authorization: str | None, drain_timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """Move the ``stable`` label back to the version the last promote moved it from.

        Returns:
            As :meth:`promote`.

        Raises:
            UnauthenticatedError: no valid admin token.
            FailedPreconditionError: no promote to roll back (or it was rolled back already).
            NotFoundError, InvalidArgumentError, UnavailableError: as :meth:`set_policy` (e.g. the
                previous version is no longer served).
        """
        self.admin_token.check(authorization)
        current = self.repository.traffic_policy(name)
        previous = current.previous_stable
        if previous is None:
            raise FailedPreconditionError(f"model '{name}' has no promote to roll back")
        left = current.version_labels.get(STABLE_LABEL)
        updated = TrafficPolicy.model_validate(
            {**current.model_dump(), "version_labels": {**current.version_labels, STABLE_LABEL: previous}}
            | {"previous_stable": None}
        )
        await self._swap(name, updated)
        drained = True if left is None else await self._drain(name, left, updated, drain_timeout_seconds)
        logger.info("model %s: stable label rolled back from version %s to %d", name, left, previous)
        return self._promotion(name, updated, drained)

    async def _swap(self, name: str, policy: TrafficPolicy) -> None:
        await self.repository.set_traffic_policy(name, policy)
        if self._follow is not None:
            await self._follow(name)

    async def _drain(self, name: str, version: int, policy: TrafficPolicy, timeout_seconds: float) -> bool:
        """Wait for the version the ``stable`` label left, unless the policy still routes requests to it."""
        if policy.routing is not None and any(
            policy.version_labels.get(label) == version for label, weight in policy.routing.weights.items() if weight
        ):
            return True  # still routed to: nothing to drain
        try:
            loaded = self.repository.get(name, str(version))
        except GatewayError:  # the version no longer serves: nothing left to drain here
            return True
        if loaded.scheduler is None:
            return True
        return await loaded.scheduler.wait_idle(timeout_seconds)

    @staticmethod
    def _promotion(name: str, policy: TrafficPolicy, drained: bool) -> dict[str, Any]:
        return {
            "name": name,
            "stable": policy.version_labels.get(STABLE_LABEL),
            "previous_stable": policy.previous_stable,
            "drained": drained,
        }
