"""The pictures of stored predictions, in the ``prediction-images`` container.

Custom Vision keeps the image of every stored prediction so that its Predictions page can show it
(``originalImageUri``, ``thumbnailUri``) and ``create_images_from_predictions`` can turn it into a
training image: the active-learning loop. visionpipe keeps it the same way, at
``{projectId}/{predictionId}/original.{ext}`` with a small JPEG beside it at
``{projectId}/{predictionId}/thumbnail.jpg`` (the same bytes when no thumbnail can be made). In
Azure a lifecycle rule deletes them after ``PREDICTION_IMAGE_RETENTION_DAYS``.

The picture is written before the prediction row that names it, so a row never points at a
picture that was never written.
"""

from __future__ import annotations

import logging
from io import BytesIO

from azure.storage.blob import ContentSettings

from visionpipe import names
from visionpipe.storage import Storage, io_pool
from visionpipe.validation import CONTENT_TYPES

log = logging.getLogger(__name__)

#: The longer side of a thumbnail, in pixels.
THUMBNAIL_SIDE = 200
THUMBNAIL_NAME = "thumbnail.jpg"
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif"}


def original_path(project_id: str, prediction_id: str, fmt: str) -> str:
    return f"{project_id}/{prediction_id}/original.{_EXTENSIONS.get(fmt, 'img')}"


def thumbnail_path(project_id: str, prediction_id: str) -> str:
    return f"{project_id}/{prediction_id}/{THUMBNAIL_NAME}"


def make_thumbnail(data: bytes) -> bytes | None:
    """A small upright JPEG of an accepted image, or None when it cannot be made (then the
    original stands in for it). Decodes in one of the process's decode slots, at a reduced JPEG
    scale."""
    from visionpipe.imaging import decode_for_model

    try:
        picture = decode_for_model(data, (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = BytesIO()
        picture.save(out, format="JPEG", quality=80)
        return out.getvalue()
    except Exception as e:  # a picture the model could read but Pillow cannot shrink: keep it
        log.warning("no thumbnail (%s); the original stands in", type(e).__name__)
        return None


def keep(storage: Storage, project_id: str, prediction_id: str, data: bytes, fmt: str) -> str:
    """Write the picture and its thumbnail; the ``{container}/{path}`` of the original, for the
    prediction row's ``blobPath``. Overwrites: a redelivered drop event writes the same blobs."""
    container = storage.container(names.PREDICTION_IMAGES)
    path = original_path(project_id, prediction_id, fmt)
    content_type = CONTENT_TYPES.get(fmt, "application/octet-stream")
    # The original goes up while the thumbnail is made and sent: one round trip of latency.
    original = io_pool("prediction-images").submit(
        container.upload_blob, path, data, overwrite=True,
        content_settings=ContentSettings(content_type=content_type))
    thumbnail = make_thumbnail(data)
    container.upload_blob(
        thumbnail_path(project_id, prediction_id), thumbnail if thumbnail is not None else data,
        overwrite=True, content_settings=ContentSettings(
            content_type="image/jpeg" if thumbnail is not None else content_type))
    original.result()
    return f"{names.PREDICTION_IMAGES}/{path}"



def read(storage: Storage, blob_path: str) -> tuple[bytes, str] | None:
    """The bytes and content type at a row's ``{container}/{path}``; None when gone."""
    from azure.core.exceptions import ResourceNotFoundError

    container, _, path = blob_path.partition("/")
    if container != names.PREDICTION_IMAGES or not path:
        return None
    try:
        downloader = storage.container(container).download_blob(path)
        data = downloader.readall()
    except ResourceNotFoundError:
        return None
    content_type = downloader.properties.content_settings.content_type
    return data, content_type or "application/octet-stream"


def thumbnail_of(blob_path: str) -> str | None:
    """The ``{container}/{path}`` of the thumbnail kept beside an original; None for a path this
    module did not write."""
    container, _, path = blob_path.partition("/")
    folder, _, name = path.rpartition("/")
    if container != names.PREDICTION_IMAGES or not folder or not name.startswith("original."):
        return None
    return f"{container}/{folder}/{THUMBNAIL_NAME}"


def delete_project(storage: Storage, project_id: str) -> int:
    """Delete every kept picture of a project (project deletion); how many blobs there were."""
    from contextlib import suppress

    from azure.core.exceptions import ResourceNotFoundError

    container = storage.container(names.PREDICTION_IMAGES)
    found = [b.name for b in container.list_blobs(name_starts_with=f"{project_id}/")]
    for name in found:
        with suppress(ResourceNotFoundError):
            container.delete_blob(name)
    return len(found)
