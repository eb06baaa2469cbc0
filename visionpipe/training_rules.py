"""What a dataset needs before it can be trained: Custom Vision's own minimums.

One copy, read by the training API (which refuses before anything is queued) and by the training
job (which checks again on the snapshot it actually trains on), so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

#: Images per tag a classification project needs (Custom Vision's minimum).
MIN_IMAGES_PER_TAG = 5
#: Tags a classification project needs.
MIN_TAGS = 2
#: Of those, tags that are not the Negative tag. The Negative tag ("none of the other tags") is a
#: class like any other for a classifier: it counts toward MIN_TAGS and needs MIN_IMAGES_PER_TAG
#: images (an empty Negative tag blocks training, as an empty Regular tag does); the service
#: asks for "at least 1 non-negative tag and 5 images for every tag". With at most one Negative
#: tag per project, MIN_TAGS = 2 implies it; the job checks it anyway (selected tags).
MIN_REGULAR_TAGS = 1
#: Images per tag an object detection project needs (Custom Vision's minimum).
MIN_IMAGES_PER_TAG_DETECTION = 15
#: Regions one training image may carry (Custom Vision's limit).
MAX_REGIONS_PER_IMAGE = 300


def region_tagged(records: Iterable[Any]) -> list[Any]:
    """An object detection project's images as training sees them: an image counts for the tags
    of its regions only (a tag set on an image without a box teaches a detector nothing), and an
    image without regions is not trained on. The API's refusals and the job's snapshot both
    count images this way."""
    return [replace(r, tag_ids=tuple(dict.fromkeys(g.tag_id for g in r.regions)))
            for r in records if r.regions]
