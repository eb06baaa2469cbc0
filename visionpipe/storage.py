"""Storage access: one set of clients per process, from a connection string or an identity.

Azurite (locally) is reached with a connection string; in Azure the Function app and the training
job use their user-assigned managed identity through ``DefaultAzureCredential``. SDK clients are
thread-safe and reuse connections, so they are created once and shared.

Every client gets a bounded retry policy and connect/read timeouts (settings ``STORAGE_*``):
with the SDK defaults (ten retries, back-off from 15 s up) a storage outage held each request for
about 80 s; now an operation gives up within seconds, and :func:`is_unavailable` lets the HTTP
adapters answer that as a 503. Nothing is cached about the outage: the next request simply tries
again, so the app recovers by itself when storage is back.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from visionpipe import names
from visionpipe.settings import StorageSettings, get_settings, on_reset

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient
    from azure.storage.blob import BlobServiceClient, ContainerClient
    from azure.storage.queue import QueueClient, QueueServiceClient

log = logging.getLogger(__name__)


class StorageUnavailable(Exception):
    """Storage did not answer in time (raised by :meth:`Storage.ping`)."""


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) means storage could not be reached or failed on its
    side: a connection or read failure, a timeout, a 5xx. Callers answer it as a 503 (retry
    later), not as a 500 (our bug)."""
    from azure.core.exceptions import (
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageUnavailable | ServiceRequestError | ServiceResponseError):
            return True
        if isinstance(current, HttpResponseError) and (current.status_code or 0) >= 500:
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass
class Storage:
    """Blob, queue and table clients for the visionpipe storage account."""

    settings: StorageSettings

    def _credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=self.settings.client_id)

    def _timeouts(self) -> dict[str, Any]:
        return {"connection_timeout": self.settings.connect_timeout_seconds,
                "read_timeout": self.settings.read_timeout_seconds}

    def _storage_retry(self, linear_retry: Any) -> dict[str, Any]:
        """Blob and queue clients: a few evenly spaced retries (the SDK's ExponentialRetry
        starts at 15 s), jittered so that instances do not retry in step."""
        backoff = self.settings.retry_backoff_seconds
        return {"retry_policy": linear_retry(backoff=backoff, random_jitter_range=backoff / 2,
                                             retry_total=self.settings.retry_total),
                **self._timeouts()}

    @cached_property
    def blobs(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient, LinearRetry

        options = self._storage_retry(LinearRetry)
        if self.settings.connection_string:
            return BlobServiceClient.from_connection_string(self.settings.connection_string,
                                                            **options)
        return BlobServiceClient(self.settings.blob_endpoint, credential=self._credential(),
                                 **options)

    @cached_property
    def queues(self) -> QueueServiceClient:
        from azure.storage.queue import LinearRetry, QueueServiceClient

        options = self._storage_retry(LinearRetry)
        if self.settings.connection_string:
            return QueueServiceClient.from_connection_string(self.settings.connection_string,
                                                             **options)
        return QueueServiceClient(self.settings.queue_endpoint, credential=self._credential(),
                                  **options)

    @cached_property
    def tables(self) -> TableServiceClient:
        from azure.core.pipeline.policies import RetryMode
        from azure.data.tables import TableServiceClient

        backoff = self.settings.retry_backoff_seconds
        options = {"retry_total": self.settings.retry_total, "retry_mode": RetryMode.Fixed,
                   "retry_backoff_factor": backoff, "retry_backoff_max": backoff,
                   **self._timeouts()}
        if self.settings.connection_string:
            return TableServiceClient.from_connection_string(self.settings.connection_string,
                                                             **options)
        return TableServiceClient(self.settings.table_endpoint, credential=self._credential(),
                                  **options)

    def container(self, name: str) -> ContainerClient:
        return self.blobs.get_container_client(name)

    def queue(self, name: str) -> QueueClient:
        """A queue client that speaks base64 JSON, the Functions default ``messageEncoding``."""
        from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy

        return self.queues.get_queue_client(
            name,
            message_encode_policy=BinaryBase64EncodePolicy(),
            message_decode_policy=BinaryBase64DecodePolicy(),
        )

    def table(self, name: str) -> TableClient:
        return self.tables.get_table_client(name)

    def ensure_resources(self) -> None:
        """Create every container, queue and table of :mod:`visionpipe.names` that is missing.

        In Azure the Bicep creates them; locally (Azurite) setup and tests call this.
        """
        from azure.core.exceptions import ResourceExistsError

        for container in names.CONTAINERS:
            with suppress(ResourceExistsError):
                self.blobs.create_container(container)
        for queue in names.QUEUES:
            with suppress(ResourceExistsError):
                self.queues.create_queue(queue)
        for table in names.TABLES:
            self.tables.create_table_if_not_exists(table)

    def ping(self, timeout: float | None = None) -> None:
        """Raise if the account does not answer within ``timeout`` seconds (``GET /health``;
        default: the ``HEALTH_TIMEOUT_SECONDS`` setting).

        One quick retry at most, timeouts no longer than the deadline, and the deadline itself
        enforced from outside the SDK (a probe thread), so that nothing it does (connecting,
        resolving a name, backing off) can hold the health check past it.
        """
        limit = self.settings.health_timeout_seconds if timeout is None else timeout
        outcome: list[BaseException | None] = []
        answered = threading.Event()

        def probe() -> None:
            try:
                self.container(names.TRAINING_IMAGES).get_container_properties(
                    retry_total=min(1, self.settings.retry_total),
                    connection_timeout=min(limit, self.settings.connect_timeout_seconds),
                    read_timeout=limit)
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                outcome.append(e)
            finally:
                answered.set()

        threading.Thread(target=probe, name="storage-ping", daemon=True).start()
        if not answered.wait(limit):
            raise StorageUnavailable(f"storage did not answer within {limit:g} s")
        if outcome[0] is not None:
            raise outcome[0]


@lru_cache(maxsize=1)
def get_storage() -> Storage:
    """The process's storage clients, created on first use."""
    return Storage(get_settings().storage)


on_reset(get_storage.cache_clear)


@cache
def io_pool(purpose: str) -> ThreadPoolExecutor:
    """A few threads for storage writes a request can overlap (a drop-folder result and its
    store row; a kept prediction picture and its thumbnail), one pool per ``purpose``, shared by
    the process and created on first use. Separate pools, because work in one pool waits on work
    in another (a drop-folder write keeps its picture): a shared pool could fill with waiters."""
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"visionpipe-{purpose}")
