"""Custom Vision's JSON shapes (Training API v3.3 / v3.4-preview) for projects, domains, tags and
images, built from the label store's records.

Field names and casing are the service's (``Project``, ``Tag``, ``Image``, ``ImageCreateSummary``
in the REST specs), because the official SDK deserialises exactly these. Pure functions: no I/O,
so the iteration routes and the CLI can share them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from visionpipe import tag_types
from visionpipe.api.adapter import WithStatus
from visionpipe.rejections import Reason
from visionpipe.stores.label_store import ImageRecord, ImageRegion, Project, Tag
from visionpipe.timestamps import iso

REGULAR_TAG = tag_types.REGULAR
TAG_TYPES = tag_types.SDK




def project_to_dict(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "description": project.description,
        "settings": {
            "domainId": project.domain_id,
            "classificationType": project.classification_type,
            "targetExportPlatforms": [],
            "useNegativeSet": False,
            "detectionParameters": None,
            "imageProcessingSettings": None,
            "exportModelContainerUri": None,
            "notificationQueueUri": None,
        },
        "created": iso(project.created),
        "lastModified": iso(project.last_modified or project.created),
        "thumbnailUri": None,
        "drModeEnabled": False,
        "status": "Succeeded",
        # visionpipe extension (clients ignore unknown fields): the type of the project's domain,
        # Classification or ObjectDetection, so a client need not look the domain up.
        "domainType": project.domain_type,
    }


def tag_to_dict(tag: Tag, image_count: int = 0) -> dict[str, Any]:
    return {
        "id": tag.id,
        "name": tag.name,
        "description": tag.description,
        "type": tag.type,
        "imageCount": image_count,
    }


def image_to_dict(record: ImageRecord, tags: Mapping[str, Tag],
                  image_uri: str | None = None) -> dict[str, Any]:
    """An ``Image``; ``tags`` maps tag id to tag (ids no longer known are left out)."""
    return {
        "id": record.id,
        "created": iso(record.created),
        "width": record.width,
        "height": record.height,
        "resizedImageUri": image_uri,
        "thumbnailUri": image_uri,
        "originalImageUri": image_uri,
        "tags": [
            {"tagId": t, "tagName": tags[t].name, "created": iso(record.created)}
            for t in record.tag_ids if t in tags
        ] or None,
        "regions": [region_to_dict(g, tags, record.created) for g in record.regions
                    if g.tag_id in tags] or None,
        "metadata": dict(record.metadata) or None,
    }


def region_to_dict(region: ImageRegion, tags: Mapping[str, Tag],
                   created: datetime) -> dict[str, Any]:
    """An ``ImageRegion``: the box, its tag, and its id (what ``delete_image_regions`` takes)."""
    tag = tags.get(region.tag_id)
    return {
        "regionId": region.region_id,
        "tagName": tag.name if tag is not None else None,
        "created": iso(created),
        "tagId": region.tag_id,
        "left": region.left,
        "top": region.top,
        "width": region.width,
        "height": region.height,
    }


class ImageStatus(StrEnum):
    """``ImageCreateStatus`` of the REST specs: one per image of an upload batch."""

    OK = "OK"
    OK_DUPLICATE = "OKDuplicate"
    ERROR_SOURCE = "ErrorSource"
    ERROR_IMAGE_FORMAT = "ErrorImageFormat"
    ERROR_IMAGE_SIZE = "ErrorImageSize"
    ERROR_STORAGE = "ErrorStorage"
    ERROR_LIMIT_EXCEED = "ErrorLimitExceed"
    ERROR_TAG_LIMIT_EXCEED = "ErrorTagLimitExceed"
    ERROR_REGION_LIMIT_EXCEED = "ErrorRegionLimitExceed"
    ERROR_UNKNOWN = "ErrorUnknown"
    ERROR_IMAGE_DIMENSIONS = "ErrorImageDimensions"
    ERROR_INVALID_TAG = "ErrorInvalidTag"
    ERROR_NEGATIVE_AND_REGULAR_TAG = "ErrorNegativeAndRegularTagOnSameImage"


#: visionpipe's reason codes (ARCHITECTURE.md, "Image rules") -> the per-image status Custom Vision
#: reports.
REASON_STATUS: dict[Reason, ImageStatus] = {
    Reason.EMPTY: ImageStatus.ERROR_IMAGE_FORMAT,
    Reason.UNSUPPORTED_FORMAT: ImageStatus.ERROR_IMAGE_FORMAT,
    Reason.CORRUPT: ImageStatus.ERROR_IMAGE_FORMAT,
    Reason.TOO_LARGE: ImageStatus.ERROR_IMAGE_SIZE,
    Reason.TOO_SMALL: ImageStatus.ERROR_IMAGE_DIMENSIONS,
    Reason.DIMENSIONS_TOO_LARGE: ImageStatus.ERROR_IMAGE_DIMENSIONS,
    Reason.BAD_ASPECT_RATIO: ImageStatus.ERROR_IMAGE_DIMENSIONS,
    Reason.TOO_MANY_PIXELS: ImageStatus.ERROR_IMAGE_DIMENSIONS,
    Reason.CONFLICTING_TAG: ImageStatus.ERROR_TAG_LIMIT_EXCEED,
    Reason.BAD_PATH: ImageStatus.ERROR_SOURCE,
    Reason.UNKNOWN_PROJECT: ImageStatus.ERROR_UNKNOWN,
}

_OK = (ImageStatus.OK, ImageStatus.OK_DUPLICATE)


@dataclass(frozen=True)
class ImageCreateResult:
    status: ImageStatus
    image: dict[str, Any] | None = None
    source_url: str | None = None
    reason: str | None = None  # visionpipe's reason code / message: why an image was refused

    def to_dict(self) -> dict[str, Any]:
        # ``reason`` is a visionpipe extension (clients ignore unknown fields): the status alone
        # does not say which limit an image broke.
        body = {"sourceUrl": self.source_url, "status": str(self.status), "image": self.image}
        if self.reason:
            body["reason"] = self.reason
        return body


def summary(results: Sequence[ImageCreateResult]) -> WithStatus:
    """``ImageCreateSummary`` and its HTTP status: 200 when every image is OK, else 207."""
    ok = all(r.status in _OK for r in results)
    body = {"isBatchSuccessful": ok, "images": [r.to_dict() for r in results]}
    return WithStatus(body, 200 if ok else 207)


def tag_entries(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """``ImageTagCreateEntry`` list from (image id, tag id) pairs."""
    return [{"imageId": i, "tagId": t} for i, t in pairs]
