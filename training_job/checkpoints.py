"""Per-epoch training checkpoints in blob storage, so a killed job resumes instead of restarting.

One blob per iteration, ``datasets/{projectId}/{iterationId}.checkpoint.pt`` (beside the
iteration's dataset snapshot, outside ``models/`` so serving and export never see it),
overwritten after an epoch (at most one save every ``--checkpoint-every`` seconds, and after the
last epoch) and deleted once the iteration is registered, Failed or Canceled. It carries an
identity (the dataset fingerprint and the options that shape training): a redelivered request
resumes only from a checkpoint of the very same training, anything else starts fresh.
"""

from __future__ import annotations

import io
import json
import logging
import time
from contextlib import suppress
from typing import Any

import torch
from azure.core.exceptions import ResourceNotFoundError

from training_job.train import Checkpoints
from visionpipe import names
from visionpipe.storage import Storage

log = logging.getLogger(__name__)


def checkpoint_blob(project_id: str, iteration_id: str) -> str:
    return f"{project_id}/{iteration_id}.checkpoint.pt"


def delete_checkpoint(storage: Storage, project_id: str, iteration_id: str) -> None:
    """Best effort: an orphaned checkpoint costs space, never correctness (identity check)."""
    try:
        storage.container(names.DATASETS).delete_blob(checkpoint_blob(project_id, iteration_id))
    except ResourceNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("could not delete the checkpoint of %s/%s: %s", project_id, iteration_id, e)


class BlobCheckpoints(Checkpoints):
    """:class:`training_job.train.Checkpoints` in the ``datasets`` container."""

    def __init__(self, storage: Storage, project_id: str, iteration_id: str,
                 identity: dict[str, Any], every_s: float = 0.0) -> None:
        self._storage = storage
        self._every_s = every_s
        self._last = time.monotonic()
        self._project_id = project_id
        self._iteration_id = iteration_id
        self._blob = storage.container(names.DATASETS).get_blob_client(
            checkpoint_blob(project_id, iteration_id))
        self._identity = json.dumps(identity, sort_keys=True, default=str)

    def load(self) -> dict[str, Any] | None:
        try:
            data = self._blob.download_blob().readall()
        except ResourceNotFoundError:
            return None
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a torn or foreign blob: train from scratch
            log.warning("ignoring an unreadable checkpoint: %s", e)
            return None
        if not isinstance(state, dict) or state.get("identity") != self._identity:
            log.info("ignoring a checkpoint of another dataset or configuration")
            return None
        return state

    def due(self) -> bool:
        """At most one save every ``every_s`` seconds (0: after every epoch): a kill loses at
        most that much training, and short epochs do not pay an upload each."""
        return time.monotonic() - self._last >= self._every_s

    def save(self, state: dict[str, Any]) -> None:
        self._last = time.monotonic()
        buf = io.BytesIO()
        torch.save({**state, "identity": self._identity}, buf)
        try:
            self._blob.upload_blob(buf.getvalue(), overwrite=True)
        except Exception as e:  # noqa: BLE001 - the next epoch's save may succeed
            log.warning("could not save the checkpoint of epoch %s: %s", state.get("epoch"), e)

    def delete(self) -> None:
        with suppress(Exception):
            delete_checkpoint(self._storage, self._project_id, self._iteration_id)
