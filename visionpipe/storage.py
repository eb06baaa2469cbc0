"""Storage access: one set of clients per process, from a connection string or an identity.

Azurite (locally) is reached with a connection string; in Azure the Function app and the training
job use their user-assigned managed identity through ``DefaultAzureCredential``. SDK clients are
thread-safe and reuse connections, so they are created once and shared.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from visionpipe import names
from visionpipe.settings import StorageSettings, get_settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient
    from azure.storage.blob import BlobServiceClient, ContainerClient
    from azure.storage.queue import QueueClient, QueueServiceClient

log = logging.getLogger(__name__)


@dataclass
class Storage:
    """Blob, queue and table clients for the visionpipe storage account."""

    settings: StorageSettings

    def _credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=self.settings.client_id)

    @cached_property
    def blobs(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        if self.settings.connection_string:
            return BlobServiceClient.from_connection_string(self.settings.connection_string)
        return BlobServiceClient(self.settings.blob_endpoint, credential=self._credential())

    @cached_property
    def queues(self) -> QueueServiceClient:
        from azure.storage.queue import QueueServiceClient

        if self.settings.connection_string:
            return QueueServiceClient.from_connection_string(self.settings.connection_string)
        return QueueServiceClient(self.settings.queue_endpoint, credential=self._credential())

    @cached_property
    def tables(self) -> TableServiceClient:
        from azure.data.tables import TableServiceClient

        if self.settings.connection_string:
            return TableServiceClient.from_connection_string(self.settings.connection_string)
        return TableServiceClient(self.settings.table_endpoint, credential=self._credential())

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
        """Create every container, queue and table of DESIGN §2 that does not exist yet.

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

    def ping(self) -> None:
        """Raise if the account cannot be reached (used by ``GET /health``)."""
        self.container(names.TRAINING_IMAGES).get_container_properties()


@lru_cache(maxsize=1)
def get_storage() -> Storage:
    """The process's storage clients, created on first use."""
    return Storage(get_settings().storage)
