"""``visionpipe migrate``: move projects out of a live Custom Vision resource into visionpipe.

The source is read with Microsoft's own SDK (``azure-cognitiveservices-vision-customvision``),
because that is the one client a Custom Vision resource is guaranteed to answer the way its
documentation says, and because visionpipe speaks the same API, the tests migrate between two
visionpipe projects with the very same code. The destination is written through visionpipe's
HTTP API (:mod:`visionpipe.client.client`), like every other CLI command, so a migration into a
deployment works the same as one into the local stack.

Why it is safe to run twice: visionpipe names an image by the SHA-256 of its bytes, so an image
uploaded again is answered ``OKDuplicate`` and nothing is duplicated; projects and tags are found
by name before anything is created. The JSON report of a previous run also lists the source images
already moved (with their tags), and a re-run skips those without downloading them again.

What cannot move, and is recorded in the report instead: trained iterations (Custom Vision never
hands out its weights; only the metrics are kept, as a record), regions of object detection
projects (visionpipe trains classifiers; images and tags move, the boxes go into the report),
tag types other than Regular (carried as Regular tags), and images visionpipe's validation
refuses (for example under 256 px without ``UPSCALE_SMALL_IMAGES``). Image metadata moves
(``images/metadata``) where the destination has that route.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from visionpipe.client.client import MAX_BATCH, ClientError, VisionpipeClient

if TYPE_CHECKING:
    from rich.console import Console

#: statuses worth another try: throttling, timeouts and the service's transient failures
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
MAX_ATTEMPTS = 6
MAX_RETRY_AFTER_S = 120.0
PAGE = 256  # images per page (the service's ``take`` limit)
BATCH_BYTES = 16 * 1024 * 1024  # raw bytes per upload batch: well under the host's body limit
DOWNLOAD_WORKERS = 4
#: the S0 training API allows a handful of calls per second; staying under it avoids the 429s
DEFAULT_CALLS_PER_SECOND = 8.0
REGULAR = "Regular"


class MigrationError(Exception):
    """A failure that ends the migration: its message is the one line the CLI prints."""


def retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    value = (headers or {}).get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... (at most 30 s)."""
    return min(30.0, 0.5 * 2 ** attempt) * (0.75 + random.random() / 2)  # noqa: S311


@dataclass
class Source:
    """A Custom Vision training endpoint read through the official SDK, with retries.

    The SDK's own retries are switched off: urllib3 would not honour ``Retry-After`` for a 429
    it does not retry, and a retry loop here can count what it did for the report.
    """

    endpoint: str
    training_key: str
    calls_per_second: float = DEFAULT_CALLS_PER_SECOND
    sleep: Callable[[float], None] = time.sleep
    retries: int = 0
    _sdk: Any = field(default=None, repr=False)
    _http: httpx.Client | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _next_call: float = 0.0

    def __post_init__(self) -> None:
        try:
            from azure.cognitiveservices.vision.customvision.training import (
                CustomVisionTrainingClient,
            )
            from msrest.authentication import ApiKeyCredentials
        except ImportError:  # a CLI-only dependency, never in the Function app's requirements
            raise MigrationError("migrate reads the source with the official SDK: pip install "
                                 "azure-cognitiveservices-vision-customvision==3.1.1") from None

        self.endpoint = self.endpoint.rstrip("/")
        credentials = ApiKeyCredentials(in_headers={"Training-key": self.training_key})
        self._sdk = CustomVisionTrainingClient(self.endpoint, credentials)
        self._sdk.config.retry_policy.retries = 0
        self._sdk.config.retry_policy.policy.status_forcelist = set()
        self._sdk.config.connection.timeout = 60
        self._http = httpx.Client(timeout=60.0, follow_redirects=True)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # --- plumbing --------------------------------------------------------------------------------
    def _throttle(self) -> None:
        if self.calls_per_second <= 0:
            return
        with self._lock:
            now = time.monotonic()
            wait = self._next_call - now
            self._next_call = max(now, self._next_call) + 1.0 / self.calls_per_second
        if wait > 0:
            self.sleep(wait)

    def _refused(self) -> MigrationError:
        return MigrationError(f"{self.endpoint} refused the training key (401): check "
                              "--from-training-key and that it belongs to this resource")

    def call(self, what: str, fn: Callable[..., Any], *args: Any, first: bool = False,
             **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the SDK client, retried on throttling and transient errors.

        ``first`` marks the probe that opens a migration: an unreachable endpoint fails at once
        there (a typo should not wait through six backoffs), later it is retried like a 503.
        """
        from azure.cognitiveservices.vision.customvision.training.models import (
            CustomVisionErrorException,
        )
        from msrest.exceptions import ClientRequestError

        for attempt in range(MAX_ATTEMPTS):
            last = attempt == MAX_ATTEMPTS - 1
            self._throttle()
            try:
                return fn(*args, **kwargs)
            except CustomVisionErrorException as e:
                response = getattr(e, "response", None)
                status = getattr(response, "status_code", 0)
                if status in (401, 403):
                    raise self._refused() from None
                if status == 404 and first:
                    raise MigrationError(f"{self.endpoint} is not a Custom Vision training "
                                         "endpoint (404)") from None
                if status not in RETRYABLE or last:
                    code = getattr(e.error, "code", None) if getattr(e, "error", None) else None
                    message = getattr(e.error, "message", None) if code else str(e)
                    detail = " ".join(str(x) for x in (status, code, message) if x)
                    raise MigrationError(f"{what}: {detail}") from None
                delay = retry_after(getattr(response, "headers", None)) or backoff(attempt)
            except ClientRequestError:
                if first or last:
                    raise MigrationError(f"cannot reach {self.endpoint} (check --from-endpoint)"
                                         ) from None
                delay = backoff(attempt)
            self.retries += 1
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def fetch(self, url: str) -> bytes:
        """The bytes behind an ``originalImageUri``, retried like the SDK calls.

        Custom Vision's URIs are signed blob links and need no key; the training key is sent only
        when the link points back at the training endpoint itself (visionpipe's do), so the key
        never travels to another host.
        """
        assert self._http is not None
        ours = urlsplit(url)[:2] == urlsplit(self.endpoint)[:2]
        headers = {"Training-Key": self.training_key} if ours else {}
        for attempt in range(MAX_ATTEMPTS):
            last = attempt == MAX_ATTEMPTS - 1
            if ours:  # blob storage links do not count against the training API's rate limit
                self._throttle()
            try:
                response = self._http.get(url, headers=headers)
            except httpx.TransportError as e:
                if last:
                    raise OSError(f"cannot download the image ({type(e).__name__})") from None
                delay = backoff(attempt)
            else:
                if response.status_code < 300:
                    return response.content
                if response.status_code not in RETRYABLE or last:
                    raise OSError(f"downloading the image answered {response.status_code}")
                delay = retry_after(response.headers) or backoff(attempt)
            self.retries += 1
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- what a migration reads ----------------------------------------------------------------
    def projects(self) -> list[Any]:
        return list(self.call("listing projects", self._sdk.get_projects, first=True))

    def domain_type(self, domain_id: str | None) -> str | None:
        if not domain_id:
            return None
        try:
            return str(self.call("reading the domain", self._sdk.get_domain, domain_id).type)
        except MigrationError:
            return None

    def tags(self, project_id: str) -> list[Any]:
        return list(self.call("listing tags", self._sdk.get_tags, project_id))

    def images(self, project_id: str) -> Iterator[Any]:
        """Every tagged image, then every untagged one, a page at a time (oldest first, so a
        page boundary does not move while new images arrive)."""
        for what, method in (("tagged", self._sdk.get_tagged_images),
                             ("untagged", self._sdk.get_untagged_images)):
            skip = 0
            while True:
                page = self.call(f"listing {what} images", method, project_id,
                                 order_by="Oldest", take=PAGE, skip=skip)
                yield from page
                if len(page) < PAGE:
                    break
                skip += PAGE

    def image_count(self, project_id: str) -> int:
        return int(self.call("counting images", self._sdk.get_tagged_image_count, project_id)) + \
            int(self.call("counting images", self._sdk.get_untagged_image_count, project_id))

    def iterations(self, project_id: str) -> list[dict[str, Any]]:
        """Each iteration as a record, with its performance at threshold 0.5 when trained."""
        records = []
        for it in self.call("listing iterations", self._sdk.get_iterations, project_id):
            record = it.serialize(keep_readonly=True)
            if it.status == "Completed":
                try:
                    perf = self.call("reading iteration performance",
                                     self._sdk.get_iteration_performance, project_id, it.id,
                                     threshold=0.5, overlap_threshold=0.3)
                    record["performance"] = perf.serialize(keep_readonly=True)
                except MigrationError as e:
                    record["performance"] = {"unavailable": str(e)}
            records.append(record)
        return records


# --- the report ---------------------------------------------------------------------------------
@dataclass
class ProjectReport:
    """What happened to one source project; ``to_dict`` is its part of the JSON report."""

    source: dict[str, Any]
    destination: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # source id -> outcome
    skipped: list[dict[str, Any]] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    iterations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    carry_metadata: bool = True

    def count(self, outcome: str) -> int:
        return sum(1 for v in self.images.values() if v["outcome"] == outcome)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "destination": self.destination, "tags": self.tags,
            "counts": {o: self.count(o) for o in ("moved", "alreadyPresent", "resumed",
                                                   "wouldMove")}
                      | {"skipped": len(self.skipped), "regions": len(self.regions)},
            "images": self.images, "skipped": self.skipped, "regions": self.regions,
            "iterations": self.iterations, "notes": self.notes,
        }


def _resume_key(source_id: str, destination: str) -> str:
    return f"{source_id}->{destination.casefold()}"


def load_previous(path: Path | None) -> dict[str, dict[str, Any]]:
    """(source project, destination name) -> the images map of an earlier report (empty when
    there is none): only what moved into this same destination is skipped."""
    if path is None or not path.exists():
        return {}
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    done: dict[str, dict[str, Any]] = {}
    for p in report.get("projects") or []:
        if isinstance(p, dict) and not report.get("dryRun"):
            images = p.get("images") if isinstance(p.get("images"), dict) else {}
            destination = str((p.get("destination") or {}).get("name") or "")
            done[_resume_key(str((p.get("source") or {}).get("id")), destination)] = images
    return done


# --- one project --------------------------------------------------------------------------------
@dataclass
class Pending:
    """One source image on its way: its bytes and the destination tag ids it should carry."""

    source_id: str
    uri: str | None
    tag_names: list[str]
    tag_ids: list[str]
    metadata: dict[str, str] = field(default_factory=dict)
    data: bytes = b""


def _upload(dest: VisionpipeClient, project_id: str, batch: Sequence[Pending],
            report: ProjectReport) -> None:
    results = dest.upload_files(project_id, [(f"{p.source_id}.img", p.data, p.tag_ids)
                                             for p in batch])
    missing: list[tuple[str, str]] = []
    for p, r in zip(batch, results, strict=False):
        status = str(r.get("status") or "ErrorUnknown")
        image = r.get("image") or {}
        if status in ("OK", "OKDuplicate"):
            have = {t.get("tagId") for t in image.get("tags") or []}
            missing += [(image["id"], t) for t in p.tag_ids if t not in have]
            report.images[p.source_id] = {
                "outcome": "moved" if status == "OK" else "alreadyPresent",
                "id": image.get("id"), "tags": p.tag_names}
        else:
            report.skipped.append({"sourceImageId": p.source_id, "status": status,
                                   "reason": str(r.get("reason") or status)})
    if missing:  # a duplicate recorded earlier without all its tags (an interrupted run)
        dest.add_image_tags(project_id, missing)
    for p in batch:
        moved = report.images.get(p.source_id)
        if p.metadata and moved is not None and moved.get("id") and report.carry_metadata:
            try:
                dest.update_image_metadata(project_id, [moved["id"]], p.metadata)
            except ClientError as e:
                if e.status == 404:  # a destination without the metadata route
                    report.carry_metadata = False
                    report.notes.append("image metadata not carried: the destination has no "
                                        "images/metadata route")
                elif e.status == 400:  # this image's pairs break a limit: the image stays
                    moved["metadataNotCarried"] = {"metadata": p.metadata, "why": e.message}
                else:
                    raise
                continue
            moved["metadata"] = p.metadata


def _destination(dest: VisionpipeClient, name: str, multilabel: bool, description: str,
                 domain_id: str | None, dry_run: bool, report: ProjectReport
                 ) -> dict[str, Any] | None:
    from visionpipe import domains

    found = dest.find_project(name)
    if found is not None:
        report.notes.append(f"destination project {name!r} exists: continuing into it")
        return found
    if dry_run:
        return None
    known = domain_id if domain_id and domains.get_domain(domain_id) else None
    if domain_id and known is None:
        report.notes.append(f"source domain {domain_id} has no visionpipe equivalent: "
                            "created with the General domain")
    return dest.create_project(name, multilabel=multilabel, description=description or None,
                               domain_id=known)


def migrate_project(source: Source, dest: VisionpipeClient, project: Any, to_name: str,
                    *, dry_run: bool, previous: dict[str, Any],
                    advance: Callable[[int], None] | None = None,
                    total: Callable[[int], None] | None = None,
                    started: Callable[[ProjectReport], None] | None = None) -> ProjectReport:
    """Move one source project into ``to_name``; everything that happened, in a report
    (handed to ``started`` first, so a run that fails halfway can still write what moved)."""
    settings = project.settings
    domain_type = source.domain_type(settings.domain_id if settings else None)
    detection = domain_type == "ObjectDetection"
    classification = (settings.classification_type if settings else None) or None
    multilabel = detection or classification == "Multilabel"
    report = ProjectReport(source={
        "id": project.id, "name": project.name, "description": project.description,
        "domainId": settings.domain_id if settings else None, "domainType": domain_type,
        "classificationType": classification})
    if started is not None:
        started(report)
    if detection:
        report.notes.append("object detection project: visionpipe trains classifiers, so its "
                            "images and tags moved (each image tagged with its regions' tags, "
                            "as a multilabel project) and the boxes are in the report's regions")
    target = _destination(dest, to_name, multilabel, project.description or "",
                          settings.domain_id if settings else None, dry_run, report)
    if target is not None:
        report.destination = {"id": target["id"], "name": target["name"],
                               "classificationType": (target.get("settings") or {})
                               .get("classificationType")}
        if not detection and classification and report.destination["classificationType"] \
                not in (None, classification):
            report.notes.append(f"destination is {report.destination['classificationType']}, "
                                f"the source {classification}")
    else:
        report.destination = {"id": None, "name": to_name, "classificationType":
                              "Multilabel" if multilabel else "Multiclass"}

    # tags, by name (names are unique case-insensitively in visionpipe)
    existing = {t["name"].casefold(): t["id"] for t in dest.list_tags(target["id"])} \
        if target is not None else {}
    tag_ids: dict[str, str] = {}
    for tag in source.tags(project.id):
        carried = REGULAR
        entry = {"name": tag.name, "sourceId": tag.id, "description": tag.description,
                 "type": tag.type, "imageCount": tag.image_count}
        if tag.type and tag.type != REGULAR:
            report.notes.append(f"tag {tag.name!r} is {tag.type}: carried as a Regular tag "
                                "(visionpipe supports Regular tags only)")
        key = tag.name.casefold()
        if key in existing:
            tag_ids[tag.id] = existing[key]
        elif target is not None:
            tag_ids[tag.id] = existing[key] = dest.create_tag(
                target["id"], tag.name, tag.description or None)["id"]
        report.tags.append(entry | {"carriedAs": carried, "id": tag_ids.get(tag.id)})

    report.iterations = source.iterations(project.id)
    if report.iterations:
        report.notes.append(f"{len(report.iterations)} iteration(s) recorded with their metrics; "
                            "trained models cannot be moved (Custom Vision does not hand out "
                            "weights): train again in visionpipe")
    if total is not None:
        total(source.image_count(project.id))

    batch: list[Pending] = []
    with_metadata = 0

    def flush() -> None:
        nonlocal batch
        if not batch:
            return
        with ThreadPoolExecutor(DOWNLOAD_WORKERS) as pool:
            fetched = list(pool.map(lambda p: _fetch(source, p), batch))
        ready = [p for p, error in zip(batch, fetched, strict=True) if error is None]
        for p, error in zip(batch, fetched, strict=True):
            if error is not None:
                report.skipped.append({"sourceImageId": p.source_id, "status": "ErrorSource",
                                       "reason": error})
        if target is not None:
            for chunk in _by_size(ready):
                _upload(dest, target["id"], chunk, report)
        if advance is not None:
            advance(len(batch))
        batch = []

    try:
        for image in source.images(project.id):
            names = sorted({t.tag_name for t in image.tags or []}
                           | {r.tag_name for r in image.regions or []})
            if image.regions:
                report.regions.append({"sourceImageId": image.id, "regions": [
                    {"tagName": r.tag_name, "left": r.left, "top": r.top, "width": r.width,
                     "height": r.height} for r in image.regions]})
            with_metadata += bool(image.metadata)
            done = previous.get(image.id)
            if isinstance(done, dict) and sorted(done.get("tags") or []) == names:
                report.images[image.id] = {**done, "outcome": "resumed"}
                if advance is not None:
                    advance(1)
                continue
            ids = [tag_ids[t.tag_id] for t in image.tags or [] if t.tag_id in tag_ids]
            ids += [tag_ids[r.tag_id] for r in image.regions or [] if r.tag_id in tag_ids]
            pending = Pending(image.id, image.original_image_uri, names,
                              list(dict.fromkeys(ids)), dict(image.metadata or {}))
            if dry_run:
                report.images[image.id] = {"outcome": "wouldMove", "id": None, "tags": names}
                if advance is not None:
                    advance(1)
                continue
            batch.append(pending)
            if len(batch) >= MAX_BATCH:
                flush()
    except MigrationError:  # the source failed mid-way: move what was read, then stop
        flush()
        raise
    flush()
    if with_metadata and report.carry_metadata and not dry_run:
        report.notes.append(f"{with_metadata} image(s) with metadata: carried")
    return report


def _by_size(ready: Sequence[Pending]) -> Iterator[list[Pending]]:
    """Upload batches of at most ``MAX_BATCH`` images and about ``BATCH_BYTES`` bytes."""
    chunk: list[Pending] = []
    size = 0
    for p in ready:
        if chunk and (len(chunk) >= MAX_BATCH or size + len(p.data) > BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(p)
        size += len(p.data)
    if chunk:
        yield chunk


def _fetch(source: Source, pending: Pending) -> str | None:
    """Fill ``pending.data`` from its URI; the reason when that fails."""
    if not pending.uri:
        return "the source gave no originalImageUri"
    try:
        pending.data = source.fetch(pending.uri)
    except OSError as e:
        return str(e)
    return None


# --- the whole run ------------------------------------------------------------------------------
def select(projects: Sequence[Any], wanted: str | None) -> list[Any]:
    """All projects, or the one named (or with this id), case-insensitively."""
    if wanted is None:
        return list(projects)
    key = wanted.casefold()
    found = [p for p in projects if key in (p.id.casefold(), p.name.casefold())]
    if not found:
        names = ", ".join(sorted(p.name for p in projects)) or "none"
        raise MigrationError(f"the source has no project {wanted!r} (it has: {names})")
    return found[:1]


def run(source: Source, dest: VisionpipeClient, *, project: str | None, to_project: str | None,
        dry_run: bool, report_path: Path | None, console: Console) -> dict[str, Any]:
    """Migrate, show a progress bar per project and a final table; the JSON report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    started = datetime.now(UTC)
    chosen = select(source.projects(), project)
    if to_project is not None and len(chosen) != 1:
        raise MigrationError("--to-project names one project: use it with --project")
    previous = load_previous(report_path)
    reports: list[ProjectReport] = []

    def write(failure: str | None = None) -> dict[str, Any]:
        result = {"source": source.endpoint, "destination": dest.endpoint, "dryRun": dry_run,
                  "startedAt": started.isoformat(), "finishedAt": datetime.now(UTC).isoformat(),
                  "retries": source.retries, "failure": failure,
                  "projects": [r.to_dict() for r in reports]}
        if report_path is not None:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(result, indent=2, default=str))
        return result

    try:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            for p in chosen:
                task = progress.add_task(f"{p.name}", total=None)
                migrate_project(
                    source, dest, p, to_project or p.name, dry_run=dry_run,
                    previous=previous.get(_resume_key(p.id, to_project or p.name), {}),
                    advance=lambda n, t=task: progress.advance(t, n),
                    total=lambda n, t=task: progress.update(t, total=n),
                    started=reports.append)
    except (MigrationError, ClientError, OSError) as e:
        write(str(e))  # what moved so far: a re-run with this report skips it
        raise
    result = write()
    _summary(console, reports, dry_run)
    return result


def _summary(console: Console, reports: Sequence[ProjectReport], dry_run: bool) -> None:
    from rich.table import Table

    table = Table(title="migration (dry run: nothing written)" if dry_run else "migration")
    for column in ("project", "into", "tags", "moved", "already there", "resumed", "skipped",
                   "regions kept in report", "iterations recorded"):
        table.add_column(column, justify="left" if column in ("project", "into") else "right")
    for r in reports:
        table.add_row(r.source["name"], r.destination.get("name") or "", str(len(r.tags)),
                      str(r.count("wouldMove") if dry_run else r.count("moved")),
                      str(r.count("alreadyPresent")), str(r.count("resumed")),
                      str(len(r.skipped)), str(sum(len(x["regions"]) for x in r.regions)),
                      str(len(r.iterations)))
    console.print(table)
    skipped = [(r.source["name"], s) for r in reports for s in r.skipped]
    if skipped:
        details = Table(title="skipped images")
        for column in ("project", "source image", "status", "why"):
            details.add_column(column, overflow="fold")
        for name, s in skipped:
            details.add_row(name, s["sourceImageId"], s["status"], s["reason"])
        console.print(details)
    for r in reports:
        for note in dict.fromkeys(r.notes):
            console.print(f"{r.source['name']}: {note}", soft_wrap=True)


__all__ = ["ClientError", "MigrationError", "Source", "migrate_project", "run"]
