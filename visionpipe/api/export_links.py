"""Signed, short-lived download links for exported models.

Custom Vision's ``Export.downloadUri`` is a URL the SDK user fetches with a plain GET (no
``Training-Key`` header), so the link carries its own proof: ``expires`` (Unix seconds) and
``sig`` = hex HMAC-SHA256 over ``"{projectId}/{iterationId}/{expires}"`` keyed with the training
key (``"{projectId}/{iterationId}/{platform}|{flavor}/{expires}"`` for a converted export, whose
link also names ``platform`` and ``flavor``). Changing the training key revokes every link; a link
is useless after it expires (``EXPORT_LINK_TTL_SECONDS``, one hour by default) and for any other
iteration or export.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode, urlsplit


def ttl_seconds() -> int:
    from visionpipe.settings import get_settings

    return get_settings().export_link_ttl_seconds


def _signature(key: str, project_id: str, iteration_id: str, expires: int,
               artifact: str = "") -> str:
    middle = f"{artifact}/" if artifact else ""
    message = f"{project_id}/{iteration_id}/{middle}{expires}".encode()
    return hmac.new(key.encode("utf-8", "surrogateescape"), message, hashlib.sha256).hexdigest()


def sign(key: str, project_id: str, iteration_id: str, *, now: float | None = None,
         ttl: int | None = None, artifact: str = "") -> dict[str, str]:
    """The query parameters that make a download link valid for ``ttl`` seconds."""
    expires = int((time.time() if now is None else now) + (ttl or ttl_seconds()))
    return {"expires": str(expires),
            "sig": _signature(key, project_id, iteration_id, expires, artifact)}


def verify(key: str | None, project_id: str, iteration_id: str, expires: str | None,
           sig: str | None, *, now: float | None = None, artifact: str = "") -> bool:
    """True when ``sig`` was made with ``key`` for these ids and ``expires`` is in the future."""
    if not key or not expires or not sig:
        return False
    try:
        at = int(expires)
    except ValueError:
        return False
    if at < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(_signature(key, project_id, iteration_id, at, artifact), sig)


def download_url(base: str, api_version: str, project_id: str, iteration_id: str, key: str,
                 *, now: float | None = None, platform: str = "", flavor: str = "") -> str:
    """``{base}/customvision/{v}/training/projects/{p}/iterations/{i}/export/download?...``;
    with ``platform`` the link is to that converted export (and signed for it alone)."""
    params = {"platform": platform, "flavor": flavor} if platform else {}
    artifact = f"{platform}|{flavor}" if platform else ""
    query = urlencode({**params, **sign(key, project_id, iteration_id, now=now,
                                        artifact=artifact)})
    return (f"{base.rstrip('/')}/customvision/{api_version}/training/projects/{project_id}/"
            f"iterations/{iteration_id}/export/download?{query}")


def public_base_url(request_url: str) -> str:
    """Where clients reach the app, for the links it hands out (export ``downloadUri``, image
    URIs): the ``PUBLIC_BASE_URL`` setting whenever it is set -- in Azure the Bicep sets it to
    the app's https host name, so a forged ``Host`` header cannot point a signed link at another
    server -- and only when it is not (local runs), the request's own URL up to the API path.
    """
    from visionpipe.settings import get_settings

    configured = get_settings().public_base_url
    if configured:
        return configured
    parts = urlsplit(request_url)
    prefix = parts.path.split("/customvision/", 1)[0] if "/customvision/" in parts.path else ""
    return f"{parts.scheme}://{parts.netloc}{prefix}".rstrip("/")
