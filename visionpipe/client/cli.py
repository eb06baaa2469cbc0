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
    "ErrorUnknown": "unknown error",
}
REPO = Path(__file__).resolve().parent.parent

F = TypeVar("F", bound=Callable[..., Any])


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
    """One file of the folder: where it came from, its tags, and what became of it."""

    path: Path
    data: bytes
    tags: list[str]
    status: str = "pending"
    reason: str = ""
    image_id: str | None = None

    @property
    def outcome(self) -> str:
        if self.status == "OK":
            return "uploaded"
        return "duplicate" if self.status == "OKDuplicate" else "rejected"


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


def _scan_dataset(folder: Path, fmt: str, console: Console) -> tuple[list[Upload], list[Upload]]:
    """(to send, refused here) from a CSV, COCO, Pascal VOC or YOLO dataset
    (:mod:`visionpipe.client.datasets`); an image carries the tags of its boxes."""
    from visionpipe.client import datasets

    found = datasets.read(folder, fmt)
    refused = [Upload(folder / name.lstrip("/\\"), b"", [], "Skipped", why)
               for name, why in found.refused]
    pending = [Upload(folder / item.name, item.data, item.tags) for item in found.items]
    boxed = sum(1 for item in found.items for r in item.regions if
                (r.left, r.top, r.width, r.height) != datasets.WHOLE_IMAGE)
    if boxed:
        console.print(f"{boxed} box(es) read: visionpipe projects are classifiers, so each image "
                      "carries its boxes' tags and the boxes themselves are not stored")
    return pending, refused


def _send(client: VisionpipeClient, project_id: str, tag_ids: dict[str, str],
          batch: list[Upload]) -> list[Upload]:
    from visionpipe.client.client import ClientError

    try:
        results = client.upload_files(project_id, [
            (u.path.name, u.data, [tag_ids[t] for t in u.tags]) for u in batch])
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


@app.command()
@friendly
def upload(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                           help="DIR/TAG/IMAGE files")],
    project: Annotated[str, typer.Option("--project", "-p", help="project name or id")],
    multilabel: bool = typer.Option(False, help="create the project as multilabel"),
    workers: int = typer.Option(4, min=1, max=16, help="batches in flight"),
    as_json: bool = typer.Option(False, "--json", help="one JSON row per file"),
    fmt: str = typer.Option("folder", "--format", "-f",
                            help="folder (DIR/TAG/IMAGE), csv, coco, voc or yolo"),
) -> None:
    """Upload a dataset folder (default: one sub-folder per tag), in parallel batches of 64."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from visionpipe.client.client import MAX_BATCH

    client = _settings().client()
    found = client.find_project(project)
    created = found is None
    proj = found or client.create_project(project, multilabel=multilabel)
    is_multilabel = proj.get("settings", {}).get("classificationType") == "Multilabel"
    if fmt == "folder":
        pending, refused = _scan(folder, is_multilabel or multilabel)
    else:
        pending, refused = _scan_dataset(folder, fmt, console=_console(stderr=True))
    tag_ids = {t["name"].casefold(): t["id"] for t in client.list_tags(proj["id"])}
    for name in sorted({t for u in pending for t in u.tags}):
        if name.casefold() not in tag_ids:
            tag_ids[name.casefold()] = client.create_tag(proj["id"], name)["id"]
    tag_ids.update({name: tag_ids[name.casefold()] for u in pending for name in u.tags})

    batches = [pending[i:i + MAX_BATCH] for i in range(0, len(pending), MAX_BATCH)]
    console = _console(stderr=as_json)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=as_json) as progress, \
            ThreadPoolExecutor(workers) as pool:
        task = progress.add_task(f"uploading to {proj['name']}", total=len(pending))
        futures = [pool.submit(_send, client, proj["id"], tag_ids, b) for b in batches]
        for future in as_completed(futures):
            progress.advance(task, len(future.result()))
    done = pending + refused

    if as_json:
        _print_json([{"file": str(u.path), "tags": u.tags, "outcome": u.outcome,
                      "status": u.status, "reason": u.reason, "imageId": u.image_id}
                     for u in done])
        return
    if created:
        console.print(f"created project {proj['name']} ({proj['id']})")
    summary = Table(title=f"upload to {proj['name']}")
    for column in ("tag", "uploaded", "duplicate", "rejected"):
        summary.add_column(column, justify="left" if column == "tag" else "right")
    for tag in sorted({t for u in done for t in (u.tags or ["(no tag)"])}):
        rows = [u for u in done if tag in (u.tags or ["(no tag)"])]
        summary.add_row(tag, *(str(sum(u.outcome == o for u in rows))
                               for o in ("uploaded", "duplicate", "rejected")))
    console.print(summary)
    known = STATUS_REASONS["OKDuplicate"]
    noted = [u for u in done
             if u.outcome == "rejected" or (u.outcome == "duplicate" and u.reason != known)]
    if noted:  # duplicates already in the project are only counted: re-uploading is normal
        details = Table(title="not uploaded")
        for column in ("file", "outcome", "status", "reason"):
            details.add_column(column, overflow="fold")
        for u in noted:
            details.add_row(str(u.path.relative_to(folder)), u.outcome, u.status, u.reason)
        console.print(details)
    counts = {o: sum(u.outcome == o for u in done) for o in ("uploaded", "duplicate", "rejected")}
    console.print(", ".join(f"{n} {o}" for o, n in counts.items()))


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
    project: Annotated[str, typer.Argument(help="project name or id")],
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
    project: Annotated[str, typer.Argument(help="project name or id")],
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
    project: Annotated[str, typer.Argument(help="project name or id")],
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
    project: Annotated[str, typer.Argument(help="project name or id")],
    iteration: str | None = typer.Option(None, "--iteration", "-i",
                                         help="name or id (default: newest trained)"),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0),
    out: Annotated[Path, typer.Option(help="folder for the PR-curve and confusion-matrix PNGs")
                   ] = Path("."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Per-tag precision / recall / AP, and the evaluation plots downloaded next to you."""
    from rich.table import Table

    from visionpipe.client.client import ClientError

    client = _settings().client()
    proj = client.project(project)
    it = _iteration(client, proj, iteration, completed=True)
    perf = client.performance(proj["id"], it["id"], threshold)
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
                     "threshold": threshold, **perf, "evaluation": evaluation, "plots": plots})
        return
    table = Table(title=f"{proj['name']} {it['name']} at threshold {threshold:g}")
    for column in ("tag", "precision", "recall", "AP"):
        table.add_column(column, justify="left" if column == "tag" else "right")
    for t in perf.get("perTagPerformance", []):
        table.add_row(t["name"], f"{t['precision']:.1%}", f"{t['recall']:.1%}",
                      f"{t['averagePrecision']:.1%}")
    table.add_section()
    table.add_row("[bold]overall[/]", f"{perf['precision']:.1%}", f"{perf['recall']:.1%}",
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
    project: Annotated[str, typer.Argument(help="project name or id")],
    iteration: Annotated[str, typer.Option("--iteration", "-i", help="name or id")],
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
    project: Annotated[str, typer.Argument(help="project name or id")],
    iteration: Annotated[str, typer.Option("--iteration", "-i", help="name or id")],
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
        typer.echo(f"parity on {parity.get('images')} golden images ({parity.get('runtime')}): "
                   f"top-1 agreement {parity.get('top1Agreement', 0):.0%} "
                   f"({parity.get('tiesSkipped', 0)} near-ties skipped), max |prob diff| "
                   f"{parity.get('maxAbsProbDiff', 0):.2e} <= tolerance "
                   f"{parity.get('tolerance')}")


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
def _images(target: Path) -> Iterator[Path]:
    if target.is_file():
        yield target
        return
    yield from sorted(p for p in target.rglob("*") if p.is_file()
                      and p.suffix.lower() in IMAGE_SUFFIXES
                      and not any(part.startswith(".") for part in p.relative_to(target).parts))


@app.command()
@friendly
def predict(
    project: Annotated[str, typer.Argument(help="project name or id")],
    target: Annotated[Path, typer.Argument(exists=True, help="an image or a folder of images")],
    name: str | None = typer.Option(None, "--name", "-n",
                                    help="publish name (default: the newest published)"),
    top: int = typer.Option(3, min=1, help="tags shown per file"),
    workers: int = typer.Option(4, min=1, max=16),
    as_json: bool = typer.Option(False, "--json", help="one JSON row per file"),
) -> None:
    """Classify with a published iteration (nothing is stored); a table of the top tags."""
    from rich.table import Table

    from visionpipe.client.client import ClientError

    client = _settings().client()
    proj = client.project(project)
    if name is None:
        published = [it for it in client.list_iterations(proj["id"]) if it.get("publishName")]
        if not published:
            raise ClientError(404, "NotFoundIteration", f"project {proj['name']!r} has no "
                              "published iteration (visionpipe publish)")
        name = str(published[0]["publishName"])
    files = list(_images(target))
    if not files:
        raise ValueError(f"no images in {target}")

    def one(path: Path) -> dict[str, Any]:
        try:
            result = client.classify(proj["id"], name, path.read_bytes())
        except ClientError as e:
            if e.status in (0, 401, 404):
                raise
            return {"file": str(path), "error": {"code": e.code, "message": e.message}}
        predictions = sorted(result.get("predictions", []), key=lambda p: -p["probability"])
        best = predictions[0] if predictions else {}
        return {"file": str(path), "tagName": best.get("tagName"),
                "probability": best.get("probability"), "predictions": predictions,
                "id": result.get("id"), "iteration": result.get("iteration"),
                "publishName": name}

    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(one, files))
    if as_json:
        _print_json(rows)
    else:
        table = Table(title=f"{proj['name']} / {name}")
        table.add_column("file", overflow="fold")
        for k in range(top):
            table.add_column(f"#{k + 1}")
        for row in rows:
            if "error" in row:
                cells = [f"[red]{row['error']['code']}: {row['error']['message']}[/]"]
            else:
                cells = [f"{p['tagName']} {p['probability']:.1%}" for p in row["predictions"][:top]]
            table.add_row(str(Path(row["file"]).relative_to(target) if target.is_dir()
                              else row["file"]), *cells)
        _console().print(table)
    if any("error" in row for row in rows):
        raise typer.Exit(1)


@app.command()
@friendly
def quarantine(
    project: Annotated[str, typer.Argument(help="project name or id")],
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
    project: Annotated[str, typer.Argument(help="project name or id")],
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
