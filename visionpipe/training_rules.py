"""What a dataset needs before it can be trained: Custom Vision's own minimums.

One copy, read by the training API (which refuses before anything is queued) and by the training
job (which checks again on the snapshot it actually trains on), so the two cannot disagree.
"""

from __future__ import annotations

#: Images per tag a classification project needs (Custom Vision's minimum).
MIN_IMAGES_PER_TAG = 5
#: Tags a classification project needs.
MIN_TAGS = 2
#: Images per tag an object detection project needs (Custom Vision's minimum).
MIN_IMAGES_PER_TAG_DETECTION = 15
#: Regions one training image may carry (Custom Vision's limit).
MAX_REGIONS_PER_IMAGE = 300
