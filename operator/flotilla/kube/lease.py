"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it.

Several operator replicas may run; only the holder of the Lease reconciles. A standby waits
until the holder's record has not changed for a whole lease duration (judged by this
process's own clock from when it last saw the record change, never by comparing the
holder's timestamps with ours, so clock skew between nodes does not matter), then takes it
with an update guarded by resourceVersion, so two standbys never both win. The holder renews
every retry period; if it cannot renew within the renew deadline it must stop at once (the
caller exits: kopf cannot un-start its handlers), and a restarted process is a standby.

Written by hand: lightkube has no leader election and the `kubernetes` client's (ConfigMap
lock) would add a second API client for ~100 lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0


class LeaderElector:
    def __init__(self, settings: LeaseSettings, client: Client | None = None) -> None:
        self.settings = settings
        self.client = client or Client(field_manager="flotilla-leader")
        self._seen: tuple[str, float] | None = None  # (resourceVersion, monotonic time first seen)
        self._stop = threading.Event()

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _spec(self, transitions: int, acquired: datetime | None) -> LeaseSpec:
        now = self._now()
        return LeaseSpec(
            holderIdentity=self.settings.identity,
            leaseDurationSeconds=int(self.settings.duration_seconds),
            acquireTime=acquired or now,
            renewTime=now,
            leaseTransitions=transitions,
        )

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True while we hold the Lease."""
        s = self.settings
        try:
            lease = self.client.get(Lease, s.name, namespace=s.namespace)
        except ApiError as err:
            if err.status.code != 404:
                raise
            body = Lease(metadata=ObjectMeta(name=s.name, namespace=s.namespace), spec=self._spec(0, None))
            try:
                self.client.create(body)
            except ApiError as create_err:
                if create_err.status.code == 409:  # another replica created it first
                    return False
                raise
            return True
        assert lease.metadata is not None
        spec = lease.spec or LeaseSpec()
        version = lease.metadata.resourceVersion or ""
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, time.monotonic())
        holder = spec.holderIdentity or ""
        ours = holder == s.identity
        expired = time.monotonic() - self._seen[1] > float(spec.leaseDurationSeconds or s.duration_seconds)
        if not (ours or not holder or expired):
            return False
        transitions = (spec.leaseTransitions or 0) + (0 if ours else 1)
        lease.spec = self._spec(transitions, spec.acquireTime if ours else None)
        try:
            self.client.replace(lease)  # carries resourceVersion: a concurrent winner makes this 409
        except ApiError as err:
            if err.status.code == 409:
                return False
            raise
        if not ours:
            log.info("leader election: %s took Lease %s/%s from %r", s.identity, s.namespace, s.name, holder)
        return True

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except Exception as err:  # the API server unreachable: not leading this round
            log.warning("leader election: %s", err)
            return False

    def acquire(self) -> None:
        """Block until this process holds the Lease."""
        log.info(
            "leader election: %s waiting for Lease %s/%s",
            self.settings.identity,
            self.settings.namespace,
            self.settings.name,
        )
        while not self._attempt():
            time.sleep(self.settings.retry_seconds)
        log.info("leader election: %s leads", self.settings.identity)

    def keep(self, lost: Callable[[], None]) -> threading.Thread:
        """Renew in a thread; call `lost` once if a renewal deadline passes without success."""

        def renew() -> None:
            last_ok = time.monotonic()
            while not self._stop.wait(self.settings.retry_seconds):
                if self._attempt():
                    last_ok = time.monotonic()
                elif time.monotonic() - last_ok > self.settings.renew_deadline_seconds:
                    log.error("leader election: lost Lease %s (no renewal for %.0f s)", self.settings.name,
                              time.monotonic() - last_ok)  # fmt: skip
                    lost()
                    return

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """On a clean stop: give the Lease up so a standby takes over at once, not after it expires."""
        self._stop.set()
        s = self.settings
        try:
            lease = self.client.get(Lease, s.name, namespace=s.namespace)
            if lease.spec is not None and lease.spec.holderIdentity == s.identity:
                lease.spec.holderIdentity = None
                lease.spec.leaseDurationSeconds = 1
                self.client.replace(lease)
                log.info("leader election: %s released Lease %s/%s", s.identity, s.namespace, s.name)
        except Exception as err:  # best effort: the Lease expires anyway
            log.warning("leader election: release failed: %s", err)
