"""The API keys: ``Training-Key`` and ``Prediction-Key`` headers.

Compared in constant time (``hmac.compare_digest`` on bytes) so the answer's timing says nothing
about how much of a guess was right. A key that is not configured matches nothing: an app without
secrets refuses every call rather than accepting every call. Keys are never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from visionpipe import names
from visionpipe.api.errors import ApiError, access_denied
from visionpipe.settings import get_settings

TRAINING_KEY_HEADER = "Training-Key"
PREDICTION_KEY_HEADER = "Prediction-Key"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup that works for case-insensitive (Functions) and plain dicts alike."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def key_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; a missing key on either side never matches."""
    if not given or not expected:
        # Still spend a comparison so "no key configured" and "wrong key" cost the same.
        hmac.compare_digest(b"\0", b"\1")
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


def _any_matches(given: str | None, secret: str, configured: str | None) -> bool:
    """``given`` against the configured key, or against every key Key Vault accepts now
    (:mod:`visionpipe.api.vault_keys`) when ``KEY_VAULT_URI`` is set."""
    if get_settings().key_vault_uri is None:
        return key_matches(given, configured)
    from visionpipe.api.vault_keys import accepted_keys

    return any([key_matches(given, k) for k in accepted_keys(secret, given, configured)])


def check_training_key(headers: Mapping[str, str]) -> ApiError | None:
    """None when the ``Training-Key`` header is right, else Custom Vision's 401 error."""
    if _any_matches(_header(headers, TRAINING_KEY_HEADER), names.TRAINING_KEY_SECRET,
                    get_settings().training_key):
        return None
    return access_denied()


def check_prediction_key(headers: Mapping[str, str]) -> ApiError | None:
    """None when the ``Prediction-Key`` header is right, else Custom Vision's 401 error."""
    if _any_matches(_header(headers, PREDICTION_KEY_HEADER), names.PREDICTION_KEY_SECRET,
                    get_settings().prediction_key):
        return None
    return access_denied()
