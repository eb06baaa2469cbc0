"""The API keys read from Key Vault at run time, so a rotation needs no restart.

With ``KEY_VAULT_URI`` set (the Bicep sets it), the secrets ``training-key`` and
``prediction-key`` are read with ``azure-keyvault-secrets`` and the app's managed identity. The
app settings ``TRAINING_KEY``/``PREDICTION_KEY`` (Key Vault references, resolved once when the
app starts) stay the fallback while Key Vault cannot be reached.

Which keys are accepted: the secret's newest enabled version, and every older enabled version
retired less than ``KEY_ROTATION_GRACE_SECONDS`` ago (retired = the moment the next version was
created), so clients can switch to a new key while the old one keeps working. Disabling a version
in Key Vault revokes it at once (at the next refresh). The answer is cached for
``KEY_CACHE_TTL_SECONDS``; a key that matches nothing cached triggers one early refresh (at most
every ``MISS_REFRESH_SECONDS``), so a freshly rotated key works within seconds while a flood of
wrong keys costs Key Vault one call per interval, not one per request.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from visionpipe.settings import get_settings, on_reset

log = logging.getLogger(__name__)

MISS_REFRESH_SECONDS = 10.0
#: after a failed read, wait this long before asking Key Vault again (the cache stays in use)
FAILURE_RETRY_SECONDS = 30.0


@dataclass
class _Entry:
    keys: tuple[str, ...]
    fetched: float


@dataclass
class VaultKeys:
    """The accepted keys per secret, read through ``client`` (a ``SecretClient``)."""

    client: Any
    ttl: float
    grace: float
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _read(self, secret: str) -> tuple[str, ...]:
        """The newest enabled version and the versions still in their grace period."""
        versions = sorted((p for p in self.client.list_properties_of_secret_versions(secret)
                           if p.created_on is not None),
                          key=lambda p: p.created_on)
        now = datetime.now(UTC)
        wanted: list[str] = []
        newest_enabled = max((i for i, p in enumerate(versions) if p.enabled), default=None)
        for i, props in enumerate(versions):
            if not props.enabled or newest_enabled is None or i > newest_enabled:
                continue
            if i < newest_enabled:
                retired = versions[i + 1].created_on
                if (now - retired).total_seconds() >= self.grace:
                    continue
            wanted.append(props.version)
        keys = [self.client.get_secret(secret, version).value for version in wanted]
        return tuple(k for k in reversed(keys) if k)  # newest first

    def accepted(self, secret: str, given: str | None = None) -> tuple[str, ...] | None:
        """The keys accepted now, None when Key Vault has not answered yet."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get(secret)
            stale = entry is None or now - entry.fetched >= self.ttl
            missed = (entry is not None and given is not None
                      and not any([hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                       k.encode("utf-8", "surrogateescape"))
                                   for k in entry.keys])
                      and now - entry.fetched >= MISS_REFRESH_SECONDS)
            if not (stale or missed):
                return entry.keys if entry is not None else None
            try:
                keys = self._read(secret)
            except Exception as e:  # noqa: BLE001 - an outage must not lock every client out
                log.warning("reading %s from Key Vault failed (%s): using the cached keys",
                            secret, type(e).__name__)
                retry_at = now - self.ttl + min(self.ttl, FAILURE_RETRY_SECONDS)
                if entry is not None:
                    entry.fetched = retry_at
                    return entry.keys
                return None
            self._entries[secret] = _Entry(keys, now)
            return keys


_instance: VaultKeys | None = None
_instance_lock = threading.Lock()


def _vault() -> VaultKeys:
    global _instance
    with _instance_lock:
        if _instance is None:
            from azure.identity import DefaultAzureCredential
            from azure.keyvault.secrets import SecretClient

            settings = get_settings()
            credential = DefaultAzureCredential(
                managed_identity_client_id=settings.storage.client_id)
            _instance = VaultKeys(SecretClient(str(settings.key_vault_uri), credential),
                                  settings.key_cache_ttl_seconds,
                                  settings.key_rotation_grace_seconds)
        return _instance


def _forget() -> None:
    global _instance
    with _instance_lock:
        _instance = None


on_reset(_forget)


def accepted_keys(secret: str, given: str | None, configured: str | None) -> tuple[str, ...]:
    """What a request's key is compared with: Key Vault's accepted keys, or while Key Vault has
    never answered, the key the app settings resolved at start."""
    found = _vault().accepted(secret, given)
    if found is None:
        return (configured,) if configured else ()
    return found
