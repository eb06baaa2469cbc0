"""Links the app hands out (export ``downloadUri``, image URIs) never come from a client's
``Host`` header when ``PUBLIC_BASE_URL`` is set (as the Bicep sets it in Azure); only a local run
without it falls back to the request's own address. Real HTTP against the local host."""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import TEST_TRAINING_KEY
from tests.model_factory import color_image
from visionpipe import names
from visionpipe.stores.label_store import Project
from visionpipe.stores.registry import Iteration

PUBLIC = "https://visionpipe-test.azurewebsites.net"
EVIL = "evil.example"


def export_link(base: str, project: Project, iteration: Iteration,
                host: str | None) -> str:
    headers = {"Training-Key": TEST_TRAINING_KEY, **({"Host": host} if host else {})}
    response = httpx.post(
        f"{base}/customvision/v3.3/training/projects/{project.id}/iterations/{iteration.id}/"
        "export", params={"platform": "ONNX"}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["downloadUri"])


def image_uris(base: str, project: Project, host: str | None, seed: int) -> set[str]:
    headers = {"Training-Key": TEST_TRAINING_KEY, **({"Host": host} if host else {})}
    contents = base64.b64encode(color_image("blue", seed=seed)).decode()
    response = httpx.post(
        f"{base}/customvision/v3.3/training/projects/{project.id}/images/files",
        json={"images": [{"name": "x.jpg", "contents": contents}]}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    (image,) = response.json()["images"]
    uris = {image["image"][k] for k in ("originalImageUri", "resizedImageUri", "thumbnailUri")}
    listed = httpx.get(f"{base}/customvision/v3.3/training/projects/{project.id}/images",
                       headers=headers, timeout=30)
    assert listed.status_code == 200, listed.text
    uris.update(i["originalImageUri"] for i in listed.json())
    return uris


@pytest.mark.parametrize("host", [EVIL, None], ids=["forged-host", "real-host"])
def test_public_base_url_is_used_whenever_set(
    local_host: str, project: Project, published: Iteration,
    app_setting: Callable[[str, str | None], None], host: str | None,
) -> None:
    app_setting(names.SETTING_PUBLIC_BASE_URL, PUBLIC + "/")  # a trailing slash is tolerated
    link = export_link(local_host, project, published, host)
    assert link.startswith(f"{PUBLIC}/customvision/v3.3/training/projects/{project.id}/"), link
    assert EVIL not in link
    uris = image_uris(local_host, project, host, seed=1 if host else 2)
    assert uris and all(u.startswith(f"{PUBLIC}/customvision/") for u in uris), uris
    # The signed link still works where it points (path and query are the app's own).
    parts = urlsplit(link)
    download = httpx.get(f"{local_host}{parts.path}?{parts.query}", timeout=30)
    assert download.status_code == 200 and len(download.content) > 0


def test_request_host_only_when_unset(
    local_host: str, project: Project, published: Iteration,
    app_setting: Callable[[str, str | None], None],
) -> None:
    """Local runs (no PUBLIC_BASE_URL): links point where the request went."""
    app_setting(names.SETTING_PUBLIC_BASE_URL, None)
    link = export_link(local_host, project, published, None)
    assert link.startswith(f"{local_host}/customvision/"), link
    uris = image_uris(local_host, project, None, seed=3)
    assert all(u.startswith(f"{local_host}/customvision/") for u in uris), uris
