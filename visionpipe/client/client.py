"""A small typed client of visionpipe's HTTP API: the Custom Vision routes plus visionpipe's own.

The CLI talks only HTTP, so whatever works against the local stack works against a deployment.
httpx rather than the Custom Vision SDK: the SDK is deprecated with the service and knows nothing of
visionpipe's extension routes (quarantine, progress, plots). Every failure surfaces as one
:class:`ClientError` with Custom Vision's ``code`` and ``message``, so callers print one line.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

TRAINING = "/customvision/v3.4-preview/training"
PREDICTION = "/customvision/v3.1/prediction"
EXTENSION = "/visionpipe/v1"
MAX_BATCH = 64  # images per upload batch (the service's limit)
DEFAULT_ENDPOINT = "http://127.0.0.1:7071"
#: one box of an upload entry: ``{tagId, left, top, width, height}`` (fractions, top-left origin)
RegionEntry = Mapping[str, Any]


class ClientError(Exception):
    """An error answer (``status`` > 0) or no answer at all (``status`` 0, code ``Unreachable``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def __str__(self) -> str:
        return self.message if self.status == 0 else f"{self.message} ({self.status} {self.code})"


def _error(response: httpx.Response) -> ClientError:
    """Custom Vision's ``{"code", "message"}`` body (also nested under ``error``), else the text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if isinstance(body, dict) and ("code" in body or "message" in body):
        return ClientError(response.status_code, str(body.get("code", "")),
                           str(body.get("message", "")))
    text = response.text.strip()[:200] or response.reason_phrase
    return ClientError(response.status_code, "HttpError", text)


class VisionpipeClient:
    """One endpoint, its two keys, one connection pool (thread-safe: uploads run in parallel)."""

    def __init__(self, endpoint: str, training_key: str | None, prediction_key: str | None,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.training_key = training_key or ""
        self.prediction_key = prediction_key or ""
        self._http = httpx.Client(base_url=self.endpoint, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VisionpipeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------------
    def _request(self, method: str, url: str, *, key: str = "training",
                 params: dict[str, Any] | None = None, json: Any = None,
                 content: bytes | None = None, headers: dict[str, str] | None = None
                 ) -> httpx.Response:
        sent = dict(headers or {})
        if key == "training":
            sent["Training-Key"] = self.training_key
        elif key == "prediction":
            sent["Prediction-Key"] = self.prediction_key
        try:
            response = self._http.request(method, url, params=params, json=json, content=content,
                                          headers=sent)
        except httpx.TimeoutException as e:
            raise ClientError(0, "Timeout", f"{self.endpoint} did not answer in time ({e})") from e
        except httpx.TransportError as e:
            raise ClientError(0, "Unreachable", f"cannot reach {self.endpoint}: {e}") from e
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self._request(method, url, **kwargs)
        return response.json() if response.content else None

    # --- projects and tags ----------------------------------------------------------------------
    def list_projects(self) -> list[dict[str, Any]]:
        return self._json("GET", f"{TRAINING}/projects")

    def create_project(self, name: str, multilabel: bool = False, description: str | None = None,
                       domain_id: str | None = None) -> dict[str, Any]:
        params = {"name": name, "classificationType": "Multilabel" if multilabel else "Multiclass"}
        params.update({k: v for k, v in (("description", description), ("domainId", domain_id))
                       if v})
        return self._json("POST", f"{TRAINING}/projects", params=params)

    def get_project(self, project_id: str) -> dict[str, Any]:
        return self._json("GET", f"{TRAINING}/projects/{project_id}")

    def find_project(self, name_or_id: str) -> dict[str, Any] | None:
        """By id or (case-insensitively) by name: the CLI takes either."""
        wanted = name_or_id.casefold()
        for project in self.list_projects():
            if project["id"].casefold() == wanted or project["name"].casefold() == wanted:
                return project
        return None

    def project(self, name_or_id: str) -> dict[str, Any]:
        found = self.find_project(name_or_id)
        if found is None:
            raise ClientError(404, "NotFoundProject", f"no project named {name_or_id!r}")
        return found

    def list_tags(self, project_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"{TRAINING}/projects/{project_id}/tags")

    def create_tag(self, project_id: str, name: str, description: str | None = None
                   ) -> dict[str, Any]:
        params = {"name": name, **({"description": description} if description else {})}
        return self._json("POST", f"{TRAINING}/projects/{project_id}/tags", params=params)

    # --- images ---------------------------------------------------------------------------------
    def upload_files(self, project_id: str, files: Sequence[tuple[str, bytes, Sequence[str]]],
                     regions: Sequence[Sequence[RegionEntry]] | None = None
                     ) -> list[dict[str, Any]]:
        """One ``images/files`` batch of (name, bytes, tag ids); the per-image results in order.

        ``regions`` (object detection projects), one list per file: the boxes that go up with
        the image in its entry (Custom Vision's ``ImageFileCreateEntry.regions``), so an image
        and its boxes land together or not at all.
        A 207 (some images refused) is an answer, not an error: the results say which and why.
        """
        if not 0 < len(files) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} images, not {len(files)}")
        if regions is not None and len(regions) != len(files):
            raise ValueError(f"{len(regions)} region lists for {len(files)} images")
        body = {"images": [
            {"name": name, "contents": base64.b64encode(data).decode("ascii"),
             "tagIds": list(tag_ids),
             **({"regions": [dict(r) for r in regions[n]]} if regions and regions[n] else {})}
            for n, (name, data, tag_ids) in enumerate(files)
        ]}
        summary = self._json("POST", f"{TRAINING}/projects/{project_id}/images/files", json=body)
        return list(summary.get("images") or [])

    def add_image_tags(self, project_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        """``images/tags`` for (image id, tag id) pairs, 256 a call (the service's limit)."""
        for start in range(0, len(pairs), 256):
            body = {"tags": [{"imageId": i, "tagId": t} for i, t in pairs[start:start + 256]]}
            self._json("POST", f"{TRAINING}/projects/{project_id}/images/tags", json=body)

    def update_image_metadata(self, project_id: str, image_ids: Sequence[str],
                              metadata: dict[str, str]) -> dict[str, Any]:
        """``images/metadata``: set key/value pairs on images (other keys stay)."""
        return self._json("POST", f"{TRAINING}/projects/{project_id}/images/metadata",
                          params={"imageIds": ",".join(image_ids)}, json=metadata)

    def list_images(self, project_id: str, take: int = 256, skip: int = 0
                    ) -> list[dict[str, Any]]:
        """One page of ``images`` (tagged and untagged), newest first."""
        return self._json("GET", f"{TRAINING}/projects/{project_id}/images",
                          params={"take": take, "skip": skip})

    def image_bytes(self, project_id: str, image_id: str) -> bytes:
        """The stored bytes of one image (its ``originalImageUri``)."""
        return self._request("GET", f"{TRAINING}/projects/{project_id}/images/{image_id}"
                                    "/original").content

    # --- training and iterations ----------------------------------------------------------------
    def train(self, project_id: str, advanced: bool = False, budget_hours: int = 0,
              force: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {"trainingType": "Advanced" if advanced else "Regular"}
        if advanced:
            params["reservedBudgetInHours"] = budget_hours
        if force:
            params["forceTrain"] = "true"
        return self._json("POST", f"{TRAINING}/projects/{project_id}/train", params=params)

    def list_iterations(self, project_id: str) -> list[dict[str, Any]]:
        """Newest first, as the service lists them."""
        return self._json("GET", f"{TRAINING}/projects/{project_id}/iterations")

    def get_iteration(self, project_id: str, iteration_id: str) -> dict[str, Any]:
        return self._json("GET", f"{TRAINING}/projects/{project_id}/iterations/{iteration_id}")

    def performance(self, project_id: str, iteration_id: str, threshold: float = 0.5,
                    overlap: float | None = None) -> dict[str, Any]:
        """``IterationPerformance`` at ``threshold``; for a detector also at ``overlap`` (the
        IoU a predicted box needs with a true one to count: ``overlapThreshold``)."""
        params: dict[str, Any] = {"threshold": threshold}
        if overlap is not None:
            params["overlapThreshold"] = overlap
        return self._json("GET", f"{TRAINING}/projects/{project_id}/iterations/{iteration_id}"
                                 "/performance", params=params)

    def publish(self, project_id: str, iteration_id: str, publish_name: str,
                prediction_id: str = "local", overwrite: bool = False) -> bool:
        params: dict[str, Any] = {"publishName": publish_name, "predictionId": prediction_id}
        if overwrite:
            params["overwrite"] = "true"
        return bool(self._json("POST", f"{TRAINING}/projects/{project_id}/iterations/"
                                       f"{iteration_id}/publish", params=params))

    def unpublish(self, project_id: str, iteration_id: str) -> None:
        self._request("DELETE", f"{TRAINING}/projects/{project_id}/iterations/{iteration_id}"
                                "/publish")

    def export(self, project_id: str, iteration_id: str, platform: str = "ONNX",
               flavor: str | None = None) -> dict[str, Any]:
        params = {"platform": platform, **({"flavor": flavor} if flavor else {})}
        return self._json("POST", f"{TRAINING}/projects/{project_id}/iterations/{iteration_id}"
                                  "/export", params=params)

    def exports(self, project_id: str, iteration_id: str) -> list[dict[str, Any]]:
        """``get_exports``: every export of the iteration with its status (and parity)."""
        return self._json("GET", f"{TRAINING}/projects/{project_id}/iterations/{iteration_id}"
                                 "/export")

    def download(self, url: str) -> bytes:
        """A ``downloadUri`` (signed, so no key needed; the training key is sent when the URL is
        on this endpoint, which the export route also accepts)."""
        key = "training" if url.startswith(self.endpoint) else "none"
        return self._request("GET", url, key=key).content

    # --- visionpipe extensions ------------------------------------------------------------------
    def cancel(self, project_id: str, iteration_id: str) -> dict[str, Any]:
        """Stop a queued or running training (visionpipe only): the iteration, now Canceled."""
        return self._json("POST", f"{EXTENSION}/projects/{project_id}/iterations/{iteration_id}"
                                  "/cancel")

    def progress(self, project_id: str, iteration_id: str) -> dict[str, Any]:
        """``{"id", "status", "progress": {epoch, epochs, trainLoss, valMetric, phase},
        "failureReason"}``: the live view Custom Vision's Iteration does not give."""
        return self._json("GET", f"{EXTENSION}/projects/{project_id}/iterations/{iteration_id}"
                                 "/progress")

    def artifact(self, project_id: str, iteration_id: str, name: str) -> bytes:
        return self._request("GET", f"{EXTENSION}/projects/{project_id}/iterations/"
                                    f"{iteration_id}/artifacts/{name}").content

    def quarantine(self, project_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"{EXTENSION}/projects/{project_id}/quarantine")

    # --- prediction -----------------------------------------------------------------------------
    def classify(self, project_id: str, publish_name: str, data: bytes) -> dict[str, Any]:
        """``classify/iterations/{name}/image/nostore``: a CLI check should not fill the
        prediction store."""
        return self._json("POST", f"{PREDICTION}/{project_id}/classify/iterations/{publish_name}"
                                  "/image/nostore", key="prediction", content=data,
                          headers={"Content-Type": "application/octet-stream"})

    def detect(self, project_id: str, publish_name: str, data: bytes) -> dict[str, Any]:
        """``detect/iterations/{name}/image/nostore``: ``predictions`` of ``{probability, tagId,
        tagName, boundingBox}``, best first (nothing stored, as :meth:`classify`)."""
        return self._json("POST", f"{PREDICTION}/{project_id}/detect/iterations/{publish_name}"
                                  "/image/nostore", key="prediction", content=data,
                          headers={"Content-Type": "application/octet-stream"})
