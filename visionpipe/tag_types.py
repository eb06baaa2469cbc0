"""Custom Vision's tag types, named once: ``Tag.type`` in the training API, ``Prediction.tagType``
in every prediction answer, ``tags[].type`` in an iteration's manifest, the ``type`` column of the
``tags`` table and of stored predictions.

``GeneralProduct`` belongs to the service's retail domains, which visionpipe has not: the API
knows the name (to refuse it clearly) and nothing stores it.
"""

from __future__ import annotations

REGULAR = "Regular"
NEGATIVE = "Negative"
GENERAL_PRODUCT = "GeneralProduct"
#: The types visionpipe stores and trains.
STORED = (REGULAR, NEGATIVE)
#: The types the SDK can send.
SDK = (REGULAR, NEGATIVE, GENERAL_PRODUCT)


def stored_or_regular(raw: object) -> str:
    """What a row or manifest written before tags had types (or holding anything else) means:
    a Regular tag, the only kind there was."""
    return raw if isinstance(raw, str) and raw in STORED else REGULAR
