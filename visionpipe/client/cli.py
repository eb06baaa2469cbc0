"""The ``visionpipe`` command line: the whole Custom Vision loop from a terminal.

Every Custom Vision-style command is a client of the HTTP API (:mod:`visionpipe.client.client`) and
nothing else, so what works against the local stack (the default endpoint) works against a
deployment with ``--endpoint`` and keys. Errors are one line and a non-zero exit; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer

from visionpipe import __version__

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from visionpipe.annotations import Region
    from visionpipe.client.client import VisionpipeClient

app = typer.Typer(help="visionpipe: self-hosted Custom Vision replacement.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
local = typer.Typer(help="The local stack: Azurite, Functions host, Event Grid bridge, worker.",
                    no_args_is_help=True)
app.add_typer(local, name="local")

DEFAULT_ENDPOINT = "http://127.0.0.1:7071"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".jfif", ".webp", ".tif", ".tiff"}
#: what a per-image status of an upload means, for the table (the API gives the status only)
STATUS_REASONS = {
    "OKDuplicate": "already in the project",
    "ErrorSource": "could not read the source",
    "ErrorImageFormat": "not a JPEG, PNG, BMP or GIF, or corrupt",
    "ErrorImageSize": "file too large",
    "ErrorImageDimensions": "dimensions out of range (sides, aspect ratio or pixel count)",
    "ErrorStorage": "storage error, try again",
    "ErrorLimitExceed": "project image limit reached",
    "ErrorTagLimitExceed": "too many tags on the image",
    "ErrorInvalidTag": "unknown tag",
    "ErrorRegionLimitExceed": "more than 300 boxes on the image",
    "ErrorUnknown": "unknown error",
}
REPO = Path(__file__).resolve().parent.parent
#: ``metrics --overlap`` default: the performance route's own default ``overlapThreshold`` and the
#: IoU of the training job's validation mAP (the figure it picks the best epoch by)
DEFAULT_OVERLAP = 0.5

F = TypeVar("F", bound=Callable[..., Any])
#: the arguments most commands share (typer copies the info per command)
ProjectArg = Annotated[str, typer.Argument(help="project name or id")]
IterationOpt = Annotated[str, typer.Option("--iteration", "-i", help="name or id")]


@dataclass
class Settings:
    endpoint: str = DEFAULT_ENDPOINT
    training_key: str | None = None
    prediction_key: str | None = None
    debug: bool = False
    _client: VisionpipeClient | None = field(default=None, repr=False)

    def client(self) -> VisionpipeClient:
        from visionpipe.client.client import VisionpipeClient

        if self._client is None:
            self._client = VisionpipeClient(self.endpoint, self.training_key,
                                             self.prediction_key)
        return self._client


def _local_keys() -> dict[str, str]:
    """TRAINING_KEY / PREDICTION_KEY from ``local.settings.json`` (where ``make setup`` writes
    fresh local keys): the current directory first, then the repository."""
    for folder in (Path.cwd(), REPO):
        path = folder / "local.settings.json"
        try:
            values = json.loads(path.read_text()).get("Values", {})
        except (OSError, ValueError):
            continue
        return {k: v for k, v in values.items() if isinstance(v, str)}
    return {}


def _is_local(endpoint: str) -> bool:
    return (urlsplit(endpoint).hostname or "") in {"127.0.0.1", "localhost", "::1"}


@app.callback()
def _options(
    ctx: typer.Context,
    endpoint: str = typer.Option(DEFAULT_ENDPOINT, envvar="VISIONPIPE_ENDPOINT",
                                 help="visionpipe API base URL (a deployment's Function App URL)"),
    training_key: str | None = typer.Option(None, envvar="VISIONPIPE_TRAINING_KEY",
                                            help="Training-Key (local: from local.settings.json)"),
    prediction_key: str | None = typer.Option(None, envvar="VISIONPIPE_PREDICTION_KEY",
                                              help="Prediction-Key (local: from "
                                                   "local.settings.json)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    if _is_local(endpoint) and not (training_key and prediction_key):
        keys = _local_keys()
        training_key = training_key or keys.get("TRAINING_KEY")
        prediction_key = prediction_key or keys.get("PREDICTION_KEY")
    global _current
    _current = ctx.obj = Settings(endpoint.rstrip("/"), training_key, prediction_key, debug)


_current = Settings()


def _settings() -> Settings:
    """The global options of the running invocation (one per process, or per runner call)."""
    return _current


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def friendly(fn: F) -> F:
    """One red line and exit 1 for an API or connection error; the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from visionpipe.client.client import ClientError

        try:
            return fn(*args, **kwargs)
        except (ClientError, OSError, ValueError) as e:
            if _settings().debug:
                raise
            message = str(e)
            if isinstance(e, ClientError) and e.status == 401:
                message = (f"access denied by {_settings().endpoint}: wrong or missing key "
                           "(--training-key/--prediction-key or VISIONPIPE_TRAINING_KEY/"
                           "VISIONPIPE_PREDICTION_KEY)")
            _console(stderr=True).print(f"[red]error:[/] {message}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


# --- resolving names ----------------------------------------------------------------------------
def _iteration(client: VisionpipeClient, project: dict[str, Any], name_or_id: str | None,
               *, completed: bool = False) -> dict[str, Any]:
    """By name or id; without one the newest (the newest Completed when ``completed``)."""
    from visionpipe.client.client import ClientError

    iterations = client.list_iterations(project["id"])
    if name_or_id is not None:
        wanted = name_or_id.casefold()
        for it in iterations:
            if wanted in (it["id"].casefold(), str(it.get("name", "")).casefold()):
                return it
        raise ClientError(404, "NotFoundIteration",
                          f"project {project['name']!r} has no iteration {name_or_id!r}")
    for it in iterations:
        if not completed or it.get("status") == "Completed":
            return it
    what = "trained iteration" if completed else "iteration"
    raise ClientError(404, "NotFoundIteration", f"project {project['name']!r} has no {what} "
                                                "yet (visionpipe train)")


# --- version and local stack --------------------------------------------------------------------
@app.command()
def version() -> None:
    """Print the visionpipe version."""
    typer.echo(__version__)


@local.command()
def up() -> None:
    """Start the local stack in the background; return once GET /health answers."""
    from visionpipe.local import stack

    stack.up()


@local.command()
def down() -> None:
    """Stop the local stack."""
    from visionpipe.local import stack

    stack.down()


@local.command()
def demo(project: str = "demo", timeout: float = 60.0,
         training_timeout: float = typer.Option(900.0, help="seconds to wait for training")
         ) -> None:
    """The whole loop on generated samples: drop folder, then upload, train, publish, predict."""
    from visionpipe.local import demo as demo_module

    demo_module.main(["--project", project, "--timeout", str(timeout),
                      "--training-timeout", str(training_timeout)])


# --- upload -------------------------------------------------------------------------------------
@dataclass
class Upload:
    """One file of the folder: where it came from, its tags (a detection image: the tags of its
    boxes), its boxes (detection projects only), and what became of it."""

    path: Path
    data: bytes
    tags: list[str]
    status: str = "pending"
    reason: str = ""
    image_id: str | None = None
    regions: list[Region] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.status == "OK":
            return "uploaded"
        return "duplicate" if self.status == "OKDuplicate" else "rejected"

    def row(self) -> dict[str, Any]:
        """The ``upload --json`` row."""
        row: dict[str, Any] = {"file": str(self.path), "tags": self.tags, "outcome": self.outcome,
                               "status": self.status, "reason": self.reason,
                               "imageId": self.image_id}
        if self.regions:
            row["regions"] = [{"tagName": r.tag, "left": r.left, "top": r.top,
                               "width": r.width, "height": r.height} for r in self.regions]
        return row


def _scan(folder: Path, multilabel: bool) -> tuple[list[Upload], list[Upload]]:
    """(to send, refused here): one sub-folder per tag; the same bytes in two tag folders are
    one image with both tags (multilabel) or a conflict (multiclass)."""
    by_hash: dict[str, Upload] = {}
    refused: list[Upload] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or \
                path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        data = path.read_bytes()
        if len(rel.parts) != 2:
            refused.append(Upload(path, data, [], "Skipped",
                                  "not in a tag folder (DIR/TAG/FILE)"))
            continue
        tag, digest = rel.parts[0], hashlib.sha256(data).hexdigest()
        first = by_hash.get(digest)
        if first is None:
            by_hash[digest] = Upload(path, data, [tag])
        elif tag in first.tags:
            refused.append(Upload(path, data, [tag], "OKDuplicate",
                                  f"same image as {first.path.relative_to(folder)}"))
        elif multilabel:
            first.tags.append(tag)
        else:
            refused.append(Upload(path, data, [tag], "ConflictingTag",
                                  f"same image as {first.path.relative_to(folder)} under "
                                  f"another tag (multiclass project)"))
    return list(by_hash.values()), refused


def _scan_dataset(folder: Path, fmt: str, detection: bool, console: Console
                  ) -> tuple[list[Upload], list[Upload]]:
    """(to send, refused here) from a CSV, COCO, Pascal VOC or YOLO dataset
    (:mod:`visionpipe.client.datasets`). A detection project gets the boxes as regions; a
    classifier, the tags of the boxes."""
    from visionpipe.client import datasets

    found = datasets.read(folder, fmt)
    refused = [Upload(folder / name.lstrip("/\\"), b"", [], "Skipped", why)
               for name, why in found.refused]
    pending = [Upload(folder / item.name, item.data, item.tags,
                      regions=list(item.regions) if detection else [])
               for item in found.items]
    boxed = sum(1 for item in found.items for r in item.regions if
                (r.left, r.top, r.width, r.height) != datasets.WHOLE_IMAGE)
    if boxed and not detection:
        console.print(f"{boxed} box(es) read: this project is a classifier, so each image "
                      "carries its boxes' tags and the boxes themselves are not stored (create "
                      "an object detection project with --detection to keep them)")
    return pending, refused


def _send(client: VisionpipeClient, project_id: str, tag_ids: dict[str, str],
          batch: list[Upload], detection: bool) -> list[Upload]:
    """One ``images/files`` batch; a detection image goes up with its boxes in its entry (and
    no image-level tag: the service tags it with its regions' tags)."""
    from visionpipe.client.client import ClientError

    files = [(u.path.name, u.data, [] if detection else [tag_ids[t] for t in u.tags])
             for u in batch]
    regions = [[{"tagId": tag_ids[r.tag], "left": r.left, "top": r.top, "width": r.width,
                 "height": r.height} for r in u.regions] for u in batch] if detection else None
    try:
        results = client.upload_files(project_id, files, regions)
    except ClientError as e:
        if e.status in (0, 401, 404):
            raise
        for u in batch:
            u.status, u.reason = e.code or "Error", e.message
        return batch
    for u, r in zip(batch, results, strict=False):
        u.status = str(r.get("status") or "ErrorUnknown")
        u.reason = str(r.get("reason") or STATUS_REASONS.get(u.status, ""))
        u.image_id = (r.get("image") or {}).get("id")
    return batch


def _is_detection(project: dict[str, Any]) -> bool:
    """An object detection project (its domain's type), from the project the API answers."""
    from visionpipe.domains import is_detection_domain

    return is_detection_domain(str((project.get("settings") or {}).get("domainId") or ""))


def _upload_summary(done: list[Upload], detection: bool, title: str) -> Table:
    """Per tag: images uploaded / duplicate / rejected (and, for a detector, boxes uploaded)."""
    from rich.table import Table

    summary = Table(title=title)
    columns = ("tag", "uploaded", "duplicate", "rejected", *(("boxes",) if detection else ()))
    for column in columns:
        summary.add_column(column, justify="left" if column == "tag" else "right")
    none = "(no boxes)" if detection else "(no tag)"
    for tag in sorted({t for u in done for t in (u.tags or [none])}):
        rows = [u for u in done if tag in (u.tags or [none])]
        cells = [str(sum(u.outcome == o for u in rows))
                 for o in ("uploaded", "duplicate", "rejected")]
        if detection:
            cells.append(str(sum(r.tag == tag for u in rows if u.outcome == "uploaded"
                                 for r in u.regions)))
        summary.add_row(tag, *cells)
    return summary


@app.command()
@friendly
def upload(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                           help="DIR/TAG/IMAGE files, or a CSV, COCO, Pascal "
                                                "VOC or YOLO dataset")],
    project: Annotated[str, typer.Option("--project", "-p", help="project name or id")],
    multilabel: bool = typer.Option(False, help="create the project as multilabel"),
    detection: bool = typer.Option(False, "--detection",
                                   help="create the project as object detection (General "
                                        "domain): the boxes go up as regions"),
    workers: int = typer.Option(4, min=1, max=16, help="batches in flight"),
    as_json: bool = typer.Option(False, "--json", help="one JSON row per file"),
    fmt: str | None = typer.Option(None, "--format", "-f",
                                   help="folder (DIR/TAG/IMAGE), csv, coco, voc or yolo "
                                        "(default: told by the files)"),
) -> None:
    """Upload a dataset folder (one sub-folder per tag, or a labelled dataset), in parallel
    batches of 64; an object detection project gets the boxes of COCO, VOC or YOLO files."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from visionpipe.client import datasets
    from visionpipe.client.client import MAX_BATCH
    from visionpipe.domains import GENERAL_DETECTION_DOMAIN_ID

    if multilabel and detection:
        raise ValueError("--multilabel is for classification projects; an object detection "
                         "project (--detection) has no classification type")
    console = _console(stderr=as_json)
    client = _settings().client()
    found = client.find_project(project)
    if found is not None and detection and not _is_detection(found):
        raise ValueError(f"project {found['name']!r} exists as a classification project: "
                         "--detection only sets the type of a new project")
    is_detection = _is_detection(found) if found is not None else detection
    if fmt is None:
        fmt = datasets.detect_format(folder)
        if fmt != "folder" and not as_json:  # one sub-folder per tag stays the quiet default
            console.print(f"reading {folder} as {fmt} (--format to choose)")
    datasets.check_format(fmt)
    if is_detection and fmt not in datasets.BOX_FORMATS:
        raise ValueError(f"an object detection project takes boxes: {folder} is {fmt}, use a "
                         f"{', '.join(datasets.BOX_FORMATS)} dataset")
    is_multilabel = multilabel if found is None else \
        found.get("settings", {}).get("classificationType") == "Multilabel"
    if fmt == "folder":
        pending, refused = _scan(folder, is_multilabel)
    else:
        pending, refused = _scan_dataset(folder, fmt, is_detection,
                                         console=_console(stderr=True))
    proj = found or client.create_project(
        project, multilabel=multilabel,
        domain_id=GENERAL_DETECTION_DOMAIN_ID if detection else None)
    tag_ids = {t["name"].casefold(): t["id"] for t in client.list_tags(proj["id"])}
    wanted = {t for u in pending for t in u.tags} | {r.tag for u in pending for r in u.regions}
    for name in sorted(wanted):
        if name.casefold() not in tag_ids:
            tag_ids[name.casefold()] = client.create_tag(proj["id"], name)["id"]
    tag_ids.update({name: tag_ids[name.casefold()] for name in wanted})

    batches = [pending[i:i + MAX_BATCH] for i in range(0, len(pending), MAX_BATCH)]
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=as_json) as progress, \
            ThreadPoolExecutor(workers) as pool:
        task = progress.add_task(f"uploading to {proj['name']}", total=len(pending))
        futures = [pool.submit(_send, client, proj["id"], tag_ids, b, is_detection)
                   for b in batches]
        for future in as_completed(futures):
            progress.advance(task, len(future.result()))
    done = pending + refused

    if as_json:
        _print_json([u.row() for u in done])
        return
    if found is None:
        kind = "object detection project" if is_detection else "project"
        console.print(f"created {kind} {proj['name']} ({proj['id']})")
    console.print(_upload_summary(done, is_detection, f"upload to {proj['name']}"))
    known = STATUS_REASONS["OKDuplicate"]
    noted = [u for u in done
             if u.outcome == "rejected" or (u.outcome == "duplicate" and u.reason != known)]
    if noted:  # duplicates already in the project are only counted: re-uploading is normal
        from rich.table import Table

        details = Table(title="not uploaded")
        for column in ("file", "outcome", "status", "reason"):
            details.add_column(column, overflow="fold")
        for u in noted:
            details.add_row(str(u.path.relative_to(folder)), u.outcome, u.status, u.reason)
        console.print(details)
    counts = {o: sum(u.outcome == o for u in done) for o in ("uploaded", "duplicate", "rejected")}
    boxes = (f", {sum(len(u.regions) for u in done if u.outcome == 'uploaded')} boxes"
             if is_detection else "")
    console.print(", ".join(f"{n} {o}" for o, n in counts.items()) + boxes)


# --- train and status ---------------------------------------------------------------------------
def _iteration_row(it: dict[str, Any], progress: dict[str, Any] | None = None) -> dict[str, Any]:
    row = {k: it.get(k) for k in ("id", "name", "status", "created", "trainedAt",
                                  "trainingType", "publishName", "trainingTimeInMinutes")}
    row["progress"] = (progress or {}).get("progress") or {}
    row["failureReason"] = (progress or {}).get("failureReason") or it.get("trainingErrorDetails")
    return row


def _watch(client: VisionpipeClient, project_id: str, iteration_id: str, interval: float,
           quiet: bool) -> dict[str, Any]:
    """Poll the progress route until the iteration leaves Training; a live epoch bar meanwhile."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  "{task.fields[detail]}", TimeElapsedColumn(), console=_console(stderr=quiet),
                  transient=quiet) as bar:
        task = bar.add_task("queued", total=None, detail="")
        while True:
            state = client.progress(project_id, iteration_id)
            p = state.get("progress") or {}
            epochs = p.get("epochs") or None
            detail = " ".join(f"{label} {p[k]:.4g}" for k, label in
                              (("trainLoss", "loss"), ("valMetric", "val")) if
                              isinstance(p.get(k), int | float))
            done = state.get("status") != "Training"
            completed = epochs if done and state.get("status") == "Completed" else p.get("epoch")
            bar.update(task, description=str(p.get("phase") or state.get("status")),
                       total=epochs, completed=completed or 0, detail=detail)
            if done:  # (early stopping ends before the last epoch: the bar shows it finished)
                return state
            time.sleep(interval)


@app.command()
@friendly
def train(
    project: ProjectArg,
    advanced: bool = typer.Option(False, "--advanced", help="Advanced training (longer)"),
    budget_hours: int = typer.Option(0, "--budget-hours", min=0,
                                     help="Advanced: reserved budget in hours"),
    force: bool = typer.Option(False, help="train even if nothing changed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Queue a training run; `visionpipe status P --watch` follows it."""
    client = _settings().client()
    proj = client.project(project)
    it = client.train(proj["id"], advanced=advanced, budget_hours=budget_hours, force=force)
    if as_json:
        _print_json(_iteration_row(it))
        return
    typer.echo(f"{it['name']} ({it['id']}) is {it['status']}; follow it with "
               f"`visionpipe status {proj['name']} --watch`")


@app.command()
@friendly
def status(
    project: ProjectArg,
    iteration: str | None = typer.Option(None, "--iteration", "-i", help="name or id"),
    watch: bool = typer.Option(False, "--watch", "-w", help="follow training until it ends"),
    interval: float = typer.Option(1.0, help="--watch: seconds between polls"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Iterations and their training progress; exit 1 when the watched one Failed."""
    from rich.table import Table

    client = _settings().client()
    proj = client.project(project)
    if watch:
        it = _iteration(client, proj, iteration)
        state = _watch(client, proj["id"], it["id"], interval, quiet=as_json)
        row = _iteration_row(client.get_iteration(proj["id"], it["id"]), state)
        if as_json:
            _print_json(row)
        else:
            reason = f": {row['failureReason']}" if row["failureReason"] else ""
            typer.echo(f"{row['name']} ({row['id']}) {row['status']}{reason}")
        if row["status"] == "Failed":
            raise typer.Exit(1)
        return
    its = client.list_iterations(proj["id"])
    if iteration is not None:
        its = [_iteration(client, proj, iteration)]
    rows = [_iteration_row(it, client.progress(proj["id"], it["id"])) for it in its]
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"iterations of {proj['name']}")
    for column in ("name", "id", "status", "progress", "published as", "trained at"):
        table.add_column(column, overflow="fold")
    for r in rows:
        p = r["progress"]
        shown = f"{p.get('phase', '')} {p.get('epoch', 0)}/{p.get('epochs', 0)}" if p else ""
        if p.get("weights"):
            shown = f"{shown} ({p['weights']})"
        if r["failureReason"]:
            shown = f"{shown} {r['failureReason']}".strip()
        table.add_row(r["name"], r["id"], r["status"], shown, r["publishName"] or "",
                      r["trainedAt"] or "")
    _console().print(table)


@app.command()
@friendly
def cancel(
    project: ProjectArg,
    iteration: str | None = typer.Option(None, "--iteration", "-i",
                                         help="name or id (default: the one in progress)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stop a queued or running training; the iteration ends Canceled (visionpipe only)."""
    from visionpipe.client.client import ClientError

    client = _settings().client()
    proj = client.project(project)
    if iteration is None:
        running = [it for it in client.list_iterations(proj["id"])
                   if it.get("status") in ("Queued", "Training")]
        if not running:
            raise ClientError(400, "BadRequestIterationNotInProgress",
                              f"project {proj['name']!r} has no training in progress")
        it = running[0]
    else:
        it = _iteration(client, proj, iteration)
    done = client.cancel(proj["id"], it["id"])
    if as_json:
        _print_json(_iteration_row(done, done))
        return
    typer.echo(f"{done['name']} ({done['id']}) {done['status']}: "
               f"{done.get('trainingErrorDetails') or ''}".rstrip(": "))


# --- metrics, publish, export -------------------------------------------------------------------
@app.command()
@friendly
def metrics(
    project: ProjectArg,
    iteration: str | None = typer.Option(None, "--iteration", "-i",
                                         help="name or id (default: newest trained)"),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0),
    overlap: float = typer.Option(DEFAULT_OVERLAP, min=0.0, max=1.0,
                                  help="object detection: the IoU a predicted box needs with a "
                                       "true one to count (overlapThreshold)"),
    out: Annotated[Path, typer.Option(help="folder for the PR-curve and confusion-matrix PNGs")
                   ] = Path("."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Per-tag precision / recall / AP (object detection: AP at --overlap, and mAP), and the
    evaluation plots downloaded next to you."""
    from rich.table import Table

    from visionpipe.client.client import ClientError

    client = _settings().client()
    proj = client.project(project)
    it = _iteration(client, proj, iteration, completed=True)
    detection = _is_detection(proj)
    perf = client.performance(proj["id"], it["id"], threshold,
                              overlap if detection else None)
    plots: dict[str, str | None] = {}
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pr_curve.png", "confusion_matrix.png"):
        try:
            data = client.artifact(proj["id"], it["id"], name)
        except ClientError as e:
            if e.status != 404:
                raise
            plots[name] = None
            continue
        path = out / f"{proj['name']}-{it['name']}-{name}".replace(" ", "_")
        path.write_bytes(data)
        plots[name] = str(path)
    p = client.progress(proj["id"], it["id"]).get("progress") or {}
    evaluation = {k: p[k] for k in ("testImages", "validationImages", "trainImages", "weights")
                  if k in p}
    if as_json:
        _print_json({"project": proj["name"], "iteration": it["name"], "iterationId": it["id"],
                     "threshold": threshold,
                     **({"overlapThreshold": overlap} if detection else {}), **perf,
                     "evaluation": evaluation, "plots": plots})
        return
    at = f"threshold {threshold:g}" + (f", overlap {overlap:g}" if detection else "")
    table = Table(title=f"{proj['name']} {it['name']} at {at}")
    for column in ("tag", "precision", "recall", "AP"):
        table.add_column(column, justify="left" if column == "tag" else "right")
    for t in perf.get("perTagPerformance", []):
        table.add_row(t["name"], f"{t['precision']:.1%}", f"{t['recall']:.1%}",
                      f"{t['averagePrecision']:.1%}")
    table.add_section()
    table.add_row("[bold]overall (mAP)[/]" if detection else "[bold]overall[/]",
                  f"{perf['precision']:.1%}", f"{perf['recall']:.1%}",
                  f"{perf['averagePrecision']:.1%}")
    console = _console()
    console.print(table)
    if evaluation:
        spread = (f"; across folds ± {perf['precisionStdDeviation']:.1%} precision, "
                  f"± {perf['recallStdDeviation']:.1%} recall"
                  if perf.get("precisionStdDeviation") or perf.get("recallStdDeviation") else "")
        console.print(f"measured on the test split: {evaluation.get('testImages', '?')} images "
                      f"(trained on {evaluation.get('trainImages', '?')}, epoch chosen on "
                      f"{evaluation.get('validationImages', '?')}){spread}; "
                      f"weights: {evaluation.get('weights', '?')}")
    for name, path in plots.items():
        console.print(f"{name}: {path or 'not recorded for this iteration'}")


@app.command()
@friendly
def publish(
    project: ProjectArg,
    iteration: IterationOpt,
    name: Annotated[str, typer.Option("--name", "-n", help="publish name prediction calls use")],
    overwrite: bool = typer.Option(False, help="move the name from another iteration"),
) -> None:
    """Publish an iteration under a name, for the prediction endpoint."""
    client = _settings().client()
    proj = client.project(project)
    it = _iteration(client, proj, iteration)
    client.publish(proj["id"], it["id"], name, overwrite=overwrite)
    typer.echo(f"published {it['name']} ({it['id']}) of {proj['name']} as {name!r}")


@app.command()
@friendly
def export(
    project: ProjectArg,
    iteration: IterationOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="a folder (or a file name) to write "
                                      "the export to")],
    platform: Annotated[str, typer.Option("--platform", "-p", help="ONNX, OpenVino, "
                                          "DockerFile")] = "ONNX",
    flavor: Annotated[str | None, typer.Option("--flavor", "-f", help="e.g. ONNXFloat16, "
                                               "ONNXInt8, ONNX12, Linux, ARM")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the conversion")] = 900.0,
) -> None:
    """Export an iteration (waiting for the conversion), download it, print its parity proof."""
    client = _settings().client()
    proj = client.project(project)
    it = _iteration(client, proj, iteration)
    exported = client.export(proj["id"], it["id"], platform, flavor)
    if exported.get("status") == "Exporting":
        exported = _wait_for_export(client, proj["id"], it["id"], exported, timeout)
    uri = exported.get("downloadUri")
    if exported.get("status") != "Done" or not uri:
        raise ValueError(f"the export is {exported.get('status')}: "
                         f"{exported.get('reason') or 'no download link'}")
    data = client.download(uri)
    name = f"{it['id']}.onnx" if not exported.get("flavor") and exported.get(
        "platform") == "ONNX" else f"{it['id']}.{exported['platform']}." \
        f"{exported.get('flavor') or 'default'}.zip"
    target = out / name if out.is_dir() or not out.suffix else out
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    typer.echo(f"wrote {target} ({len(data):,} bytes, {exported.get('platform', 'ONNX')}"
               f"{' ' + exported['flavor'] if exported.get('flavor') else ''})")
    parity = exported.get("parity")
    if parity:
        typer.echo(parity_line(parity))


def parity_line(parity: dict[str, Any]) -> str:
    """The export's parity record in one line, in its own terms: boxes for a detector, nothing
    claimed where the runtime could not run the export (CoreML off Apple platforms)."""
    if parity.get("kind") == "detection":
        return (f"detection parity on {parity.get('images')} golden scenes "
                f"({parity.get('runtime')}): {parity.get('detectionsMatched')} boxes matched "
                f"({parity.get('tiesSkipped', 0)} ties skipped), min IoU "
                f"{parity.get('minIoU', 0):.4f}, max |score diff| "
                f"{parity.get('maxScoreDiff', 0):.2e}")
    if parity.get("passed") is None:
        line = (f"parity not measured here: {parity.get('runtime')}; verify with "
                f"{parity.get('verifiedBy')}")
        source = parity.get("intermediate")
        if isinstance(source, dict):
            line += f"; the converter's source graph: {parity_line(source)}"
        return line
    return (f"parity on {parity.get('images')} golden images ({parity.get('runtime')}): "
            f"top-1 agreement {parity.get('top1Agreement', 0):.0%} "
            f"({parity.get('tiesSkipped', 0)} near-ties skipped), max |prob diff| "
            f"{parity.get('maxAbsProbDiff', 0):.2e} <= tolerance {parity.get('tolerance')}")


def _wait_for_export(client: Any, project_id: str, iteration_id: str, export: dict[str, Any],
                     timeout: float) -> dict[str, Any]:
    """Poll ``get_exports`` with a spinner until this export is Done or Failed."""
    deadline = time.monotonic() + timeout
    with _console(stderr=True).status(f"exporting to {export['platform']} "
                                      f"{export.get('flavor') or ''}..."):
        while time.monotonic() < deadline:
            for e in client.exports(project_id, iteration_id):
                if (e["platform"], e.get("flavor")) == (export["platform"], export.get("flavor")) \
                        and e["status"] != "Exporting":
                    return dict(e)
            time.sleep(1.0)
    raise ValueError(f"the export did not finish within {timeout:.0f} s")


# --- predict and quarantine ---------------------------------------------------------------------
def _images(target: Path, skip: Path | None = None) -> Iterator[Path]:
    """The images of ``target`` (a file or a folder), leaving out hidden ones and ``skip`` (the
    --annotate folder when it lies inside: a re-run must not predict on its own drawings)."""
    if target.is_file():
        yield target
        return
    for p in sorted(p for p in target.rglob("*") if p.is_file()
                    and p.suffix.lower() in IMAGE_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(target).parts)):
        if skip is None or not p.resolve().is_relative_to(skip):
            yield p


def _annotate_folder(target: Path, annotate: Path | None) -> Path | None:
    """The resolved --annotate folder; refused where a drawing would overwrite an input."""
    if annotate is None:
        return None
    out = annotate.resolve()
    source = target.resolve() if target.is_dir() else target.resolve().parent
    if out == source:
        raise ValueError(f"--annotate {annotate} is where the images are: the drawings would "
                         "overwrite them; choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--annotate {annotate} is a file, not a folder")
    return out


def _box_text(box: dict[str, Any]) -> str:
    return (f"x {box['left']:.3f}  y {box['top']:.3f}  w {box['width']:.3f}  "
            f"h {box['height']:.3f}")


def _prediction_table(rows: list[dict[str, Any]], target: Path, title: str, detection: bool,
                      top: int, threshold: float) -> Table:
    """Classification: one row per file with its top tags. Detection: one row per box at or
    above the display threshold (file named on its first), a file without any says so."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("file", overflow="fold")
    if detection:
        for column in ("tag", "probability", "box (fractions of the image)"):
            table.add_column(column, justify="right" if column == "probability" else "left")
    else:
        for k in range(top):
            table.add_column(f"#{k + 1}")
    for row in rows:
        shown = str(Path(row["file"]).relative_to(target) if target.is_dir() else row["file"])
        if "error" in row:
            table.add_row(shown, f"[red]{row['error']['code']}: {row['error']['message']}[/]")
        elif not detection:
            table.add_row(shown, *(f"{p['tagName']} {p['probability']:.1%}"
                                   for p in row["predictions"][:top]))
        elif not row["boxes"]:
            table.add_row(shown, f"(no box at or above {threshold:.0%})", "", "")
        else:
            for n, b in enumerate(row["boxes"]):
                table.add_row(shown if n == 0 else "", str(b["tagName"]),
                              f"{b['probability']:.1%}", _box_text(b["boundingBox"]))
    return table


@app.command()
@friendly
def predict(
    project: ProjectArg,
    target: Annotated[Path, typer.Argument(exists=True, help="an image or a folder of images")],
    name: str | None = typer.Option(None, "--name", "-n",
                                    help="publish name (default: the newest published)"),
    top: int = typer.Option(3, min=1, help="classification: tags shown per file"),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0,
                                    help="object detection: show boxes of at least this "
                                         "probability (the API answers down to 1%)"),
    annotate: Annotated[Path | None, typer.Option(
        "--annotate", help="object detection: write a copy of each image with its boxes and "
                           "labels drawn into this folder")] = None,
    workers: int = typer.Option(4, min=1, max=16),
    as_json: bool = typer.Option(False, "--json", help="one JSON row per file"),
) -> None:
    """Classify or detect with a published iteration (nothing is stored): a table of the top
    tags per file, or of the boxes found in it."""
    from visionpipe.client.client import ClientError

    client = _settings().client()
    proj = client.project(project)
    detection = _is_detection(proj)
    if annotate is not None and not detection:
        raise ValueError(f"--annotate draws boxes: {proj['name']!r} is a classification project")
    out = _annotate_folder(target, annotate)
    if name is None:
        published = [it for it in client.list_iterations(proj["id"]) if it.get("publishName")]
        if not published:
            raise ClientError(404, "NotFoundIteration", f"project {proj['name']!r} has no "
                              "published iteration (visionpipe publish)")
        name = str(published[0]["publishName"])
    files = list(_images(target, out))
    if not files:
        raise ValueError(f"no images in {target}")
    call = client.detect if detection else client.classify

    def one(path: Path) -> dict[str, Any]:
        data = path.read_bytes()
        try:
            result = call(proj["id"], name, data)
        except ClientError as e:
            if e.status in (0, 401, 404):
                raise
            return {"file": str(path), "error": {"code": e.code, "message": e.message}}
        predictions = sorted(result.get("predictions", []), key=lambda p: -p["probability"])
        best = predictions[0] if predictions else {}
        row = {"file": str(path), "tagName": best.get("tagName"),
               "probability": best.get("probability"), "predictions": predictions,
               "id": result.get("id"), "iteration": result.get("iteration"),
               "publishName": name}
        if detection:
            row["threshold"] = threshold
            row["boxes"] = [p for p in predictions if p["probability"] >= threshold]
            if out is not None:
                from visionpipe.client.drawing import draw_boxes, save_like

                rel = path.relative_to(target) if target.is_dir() else Path(path.name)
                row["annotated"] = str(save_like(draw_boxes(data, row["boxes"]), out / rel))
        return row

    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(one, files))
    if as_json:
        _print_json(rows)
    else:
        console = _console()
        console.print(_prediction_table(rows, target, f"{proj['name']} / {name}", detection, top,
                                        threshold))
        if out is not None:
            drawn = sum("annotated" in row for row in rows)
            console.print(f"{drawn} annotated image(s) in {annotate}")
    if any("error" in row for row in rows):
        raise typer.Exit(1)


@app.command()
@friendly
def quarantine(
    project: ProjectArg,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What the drop folders rejected for this project, and why (files kept in quarantine/)."""
    from rich.table import Table

    client = _settings().client()
    proj = client.project(project)
    rows = client.quarantine(proj["id"])
    if as_json:
        _print_json(rows)
        return
    if not rows:
        typer.echo(f"nothing quarantined for {proj['name']}")
        return
    table = Table(title=f"quarantined for {proj['name']}")
    for column in ("file", "reason", "message", "when"):
        table.add_column(column, overflow="fold")
    for r in rows:
        source = r.get("source") or {}
        table.add_row(f"{source.get('container', r.get('container'))}/{source.get('path', '?')}",
                      str(r.get("reason", "")), str(r.get("message", "")),
                      str(r.get("quarantinedAt", ""))[:19])
    _console().print(table)


# --- datasets -----------------------------------------------------------------------------------
dataset = typer.Typer(help="Datasets on disk: folder-per-tag, CSV, COCO, Pascal VOC, YOLO.",
                      no_args_is_help=True)
app.add_typer(dataset, name="dataset")


@dataset.command("export")
@friendly
def dataset_export(
    project: ProjectArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write")],
    fmt: str = typer.Option("folder", "--format", "-f", help="folder, csv, coco, voc or yolo"),
) -> None:
    """Write a project's images and labels to a folder (`visionpipe upload --format` reads it)."""
    from visionpipe.client import datasets

    datasets.check_format(fmt)
    client = _settings().client()
    proj = client.project(project)
    items: list[Any] = []
    skip = 0
    while True:
        page = client.list_images(proj["id"], take=256, skip=skip)
        for image in page:
            data = client.image_bytes(proj["id"], image["id"])
            items.append(datasets.Item(
                image["id"] + datasets.extension(data), data,
                [t["tagName"] for t in image.get("tags") or []],
                [datasets.Region(r["tagName"], r["left"], r["top"], r["width"], r["height"])
                 for r in image.get("regions") or []],
                (image["width"], image["height"]) if image.get("width") else None))
        if len(page) < 256:
            break
        skip += 256
    notes = datasets.write(items, out, fmt)
    typer.echo(f"wrote {len(items)} images of {proj['name']} to {out} as {fmt}")
    for note in notes:
        typer.echo(note)


# --- lifecycle events ---------------------------------------------------------------------------
@app.command()
@friendly
def events(
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new events"),
    event_type: str | None = typer.Option(None, "--type", help="only this type, e.g. "
                                          "Visionpipe.IterationPublished"),
    interval: float = typer.Option(1.0, help="--follow: seconds between polls"),
    as_json: bool = typer.Option(False, "--json", help="one CloudEvent JSON per line"),
) -> None:
    """The local stack's lifecycle events (in Azure they go to the Event Grid topic instead)."""
    import os

    from visionpipe import names
    from visionpipe.pipeline import lifecycle_events
    from visionpipe.settings import StorageSettings
    from visionpipe.storage import Storage

    env = os.environ if os.environ.get(names.STORAGE_CONNECTION) else _local_keys()
    try:
        storage = Storage(StorageSettings.from_env(env))
    except RuntimeError as e:  # no storage configured: say so in one line
        raise ValueError(f"{e} (the local stack's local.settings.json has it)") from None
    found = (lifecycle_events.follow(storage, interval=interval) if follow
             else (e for _, e in lifecycle_events.read_local(storage)))
    try:
        for event in found:
            if event_type and event.get("type") != event_type:
                continue
            if as_json:
                typer.echo(json.dumps(event))
            else:
                data = event.get("data") or {}
                detail = ", ".join(f"{k}={v}" for k, v in data.items()
                                   if k not in ("projectId", "metrics") and v is not None)
                typer.echo(f"{str(event.get('time', ''))[:19]} {event.get('type')} "
                           f"{event.get('subject')} {detail}")
    except KeyboardInterrupt:
        pass


# --- keys -----------------------------------------------------------------------------------------
keys = typer.Typer(help="The deployment's API keys in Key Vault.", no_args_is_help=True)
app.add_typer(keys, name="keys")


@keys.command("rotate")
@friendly
def keys_rotate(
    vault_uri: Annotated[str, typer.Option("--vault-uri", envvar="AZURE_KEY_VAULT_ENDPOINT",
                                           help="the Key Vault (azd output "
                                                "AZURE_KEY_VAULT_ENDPOINT)")],
    training: bool = typer.Option(True, "--training/--no-training", help="rotate the training "
                                  "key"),
    prediction: bool = typer.Option(True, "--prediction/--no-prediction",
                                    help="rotate the prediction key"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write new API keys to Key Vault (your Azure login); the app takes them within minutes
    and accepts the old ones for KEY_ROTATION_GRACE_SECONDS (default 1 h) meanwhile."""
    import secrets

    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    from visionpipe import names

    client = SecretClient(vault_uri, DefaultAzureCredential())
    chosen = []
    if training:
        chosen.append((names.TRAINING_KEY_SECRET, "VISIONPIPE_TRAINING_KEY", "Training-Key"))
    if prediction:
        chosen.append((names.PREDICTION_KEY_SECRET, "VISIONPIPE_PREDICTION_KEY",
                       "Prediction-Key"))
    if not chosen:
        raise ValueError("nothing to rotate: drop --no-training or --no-prediction")
    rotated = {}
    for secret, variable, header in chosen:
        value = secrets.token_hex(16)  # the shape of a Custom Vision key: 32 hex characters
        client.set_secret(secret, value, content_type="text/plain")
        rotated[secret] = {"value": value, "environment": variable, "header": header}
    if as_json:
        _print_json(rotated)
        return
    for entry in rotated.values():
        typer.echo(f"new {entry['header']}: {entry['value']}")
    typer.echo("Clients: send the new keys (or set " + " / ".join(
        e["environment"] for e in rotated.values()) + "); the old keys keep working for the "
        "grace period. Also `azd env set` them, so the next `azd provision` writes these and "
        "not the old ones back into Key Vault.")


# --- migrate from Custom Vision -----------------------------------------------------------------
@app.command()
@friendly
def migrate(
    from_endpoint: Annotated[str, typer.Option("--from-endpoint",
                                               help="the Custom Vision resource's endpoint")],
    from_training_key: Annotated[str, typer.Option("--from-training-key",
                                                   envvar="CUSTOM_VISION_TRAINING_KEY",
                                                   help="its training key")],
    project: str | None = typer.Option(None, "--project", "-p", help="source project name or id"),
    all_projects: bool = typer.Option(False, "--all", help="every project of the resource"),
    to_project: str | None = typer.Option(None, "--to-project",
                                          help="destination name (default: the source's)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="read the source, write nothing"),
    report: Annotated[Path | None, typer.Option(
        "--report", help="JSON report; a re-run reads it to skip what moved")] = None,
    calls_per_second: float = typer.Option(8.0, min=0.0,
                                           help="source calls per second (0: no limit)"),
) -> None:
    """Move projects from Azure Custom Vision (official SDK) into this visionpipe."""
    from visionpipe.client import migrate as migration

    if all_projects == (project is not None):
        raise ValueError("name one source project with --project, or use --all")
    source: migration.Source | None = None
    try:
        source = migration.Source(from_endpoint, from_training_key, calls_per_second)
        migration.run(source, _settings().client(), project=project, to_project=to_project,
                      dry_run=dry_run, report_path=report, console=_console())
    except migration.MigrationError as e:
        if _settings().debug:
            raise
        _console(stderr=True).print(f"[red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        if source is not None:
            source.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
