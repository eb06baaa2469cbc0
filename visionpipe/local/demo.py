"""``make demo``: the whole loop on generated pictures, first through the drop folder, then the CLI.

1. The drop folder: good pictures of a few tags plus deliberately bad files go into
   ``training-images`` exactly as a user would drop them; a table shows each file's fate
   (labelled, or quarantined with its reason).
2. The command line (docs/cli.md), run as a user would type it: ``visionpipe upload`` a tag-folder
   sample set under ``.local/demo-data/``, ``train``, ``status --watch``, ``metrics``, ``publish``,
   ``predict`` a held-back folder, ``quarantine``. Only HTTP, so the same loop works in Azure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from visionpipe import names
from visionpipe.local.samples import bad_files, make_image
from visionpipe.storage import Storage, get_storage
from visionpipe.stores.label_store import LabelStore
from visionpipe.stores.quarantine import REASON_SUFFIX, quarantine_path

if TYPE_CHECKING:
    from pathlib import Path

DEMO_TAGS = ("circle", "stripes", "triangle")


@dataclass(frozen=True)
class SampleFile:
    path: str  # inside training-images
    data: bytes
    expected: str  # "labelled" or a reason code


def sample_set(project: str, per_tag: int = 8) -> list[SampleFile]:
    files = [
        SampleFile(f"{project}/{tag}/{tag}-{i:02d}.jpg", make_image(tag, seed=1000 + i), "labelled")
        for tag in DEMO_TAGS
        for i in range(per_tag)
    ]
    files += [
        SampleFile(f"{project}/{DEMO_TAGS[0]}/{name}", data, reason)
        for name, (data, reason) in bad_files().items()
    ]
    files.append(SampleFile(f"{project}/no-tag-folder.jpg", make_image("ring", 1), "bad_path"))
    return files


def fate(storage: Storage, store: LabelStore, project: str, f: SampleFile) -> tuple[str, str]:
    """("labelled", tag names) | (reason code, message) | ("pending", "")."""
    reason_blob = storage.container(names.QUARANTINE).get_blob_client(
        quarantine_path(names.TRAINING_IMAGES, f.path) + REASON_SUFFIX)
    if reason_blob.exists():
        reason = json.loads(reason_blob.download_blob().readall())
        return reason["reason"], reason["message"]
    found = store.find_project(project)
    if found is not None:
        image = store.get_image(found.id, hashlib.sha256(f.data).hexdigest())
        if image is not None and f.path in image.blob_paths:
            tags = {t.id: t.name for t in store.list_tags(found.id)}
            return "labelled", ", ".join(tags.get(t, t) for t in image.tag_ids)
    return "pending", ""


def run(project: str, timeout: float, console: Console) -> bool:
    storage = get_storage()
    store = LabelStore(storage)
    files = sample_set(project)
    drop = storage.container(names.TRAINING_IMAGES)
    with Progress(console=console, transient=True) as progress, ThreadPoolExecutor(8) as pool:
        task = progress.add_task(f"dropping {len(files)} files into training-images/{project}/",
                                 total=len(files))
        for _ in pool.map(lambda f: drop.upload_blob(f.path, f.data, overwrite=True), files):
            progress.advance(task)

    results: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout
    with console.status("waiting for the pipeline (Event Grid bridge -> ingest function)..."):
        while len(results) < len(files) and time.monotonic() < deadline:
            for f in files:
                if f.path not in results:
                    outcome = fate(storage, store, project, f)
                    if outcome[0] != "pending":
                        results[f.path] = outcome
            time.sleep(0.3)

    table = Table(title=f"training-images/{project}/ after the drop")
    for column in ("file", "bytes", "outcome", "detail"):
        table.add_column(column, overflow="fold")
    as_expected = True
    for f in files:
        outcome, detail = results.get(f.path, ("pending", "no result within the timeout"))
        ok = outcome == f.expected
        as_expected &= ok
        style = "green" if outcome == "labelled" else ("yellow" if ok else "red")
        shown = "labelled" if outcome == "labelled" else f"quarantined: {outcome}"
        if outcome == "pending":
            shown = "pending"
        table.add_row(f.path.split("/", 1)[1], f"{len(f.data):,}", f"[{style}]{shown}[/]",
                      detail)
    console.print(table)
    labelled = sum(1 for o, _ in results.values() if o == "labelled")
    console.print(f"{labelled} labelled, {len(results) - labelled} quarantined, "
                  f"{len(files) - len(results)} pending. Quarantined files are kept with their "
                  f"reasons under quarantine/{names.TRAINING_IMAGES}/{project}/.")
    return as_expected


def write_cli_samples(root: Path, per_tag: int = 15, held_back: int = 3) -> tuple[Path, Path]:
    """``root/train/{tag}/*.jpg`` plus one file the API refuses (too small), and a held-back
    ``root/held-back/`` folder the model never sees. Seeds overlap the drop-folder set on purpose:
    those files come back as duplicates."""
    train, held = root / "train", root / "held-back"
    for tag in DEMO_TAGS:
        (train / tag).mkdir(parents=True, exist_ok=True)
        for i in range(per_tag):
            (train / tag / f"{tag}-{i:02d}.jpg").write_bytes(make_image(tag, seed=1000 + i))
    (train / DEMO_TAGS[1] / "thumbnail.jpg").write_bytes(make_image(DEMO_TAGS[1], 7, (96, 96)))
    held.mkdir(parents=True, exist_ok=True)
    for tag in DEMO_TAGS:
        for i in range(held_back):
            (held / f"{tag}-{i}.jpg").write_bytes(make_image(tag, seed=5000 + i))
    return train, held


def visionpipe(console: Console, *args: str, capture: bool = False) -> str:
    """Run one ``visionpipe`` command as its own process, as a user would; stop on failure."""
    console.print(f"\n[bold cyan]$ visionpipe {shlex.join(args)}[/]")
    done = subprocess.run([sys.executable, "-m", "visionpipe.client.cli", *args], text=True,
                          stdout=subprocess.PIPE if capture else None)
    if done.returncode != 0:
        raise SystemExit(f"`visionpipe {shlex.join(args)}` failed (exit {done.returncode})")
    return done.stdout or ""


def cli_loop(project: str, data: Path, training_timeout: float, console: Console) -> None:
    console.rule("[bold]the command line: upload, train, watch, metrics, publish, predict")
    train, held = write_cli_samples(data)
    visionpipe(console, "upload", str(train), "--project", project)
    started = json.loads(visionpipe(console, "train", project, "--force", "--json",
                                    capture=True))
    console.print(f"{started['name']} ({started['id']}) is {started['status']}")
    watch = ["status", project, "--watch", "--iteration", started["id"]]
    console.print(f"\n[bold cyan]$ visionpipe {shlex.join(watch)}[/]")
    try:
        subprocess.run([sys.executable, "-m", "visionpipe.client.cli", *watch], check=True,
                       timeout=training_timeout)
    except subprocess.TimeoutExpired as e:
        raise SystemExit(f"training did not finish within {training_timeout:.0f} s; is the "
                         "worker running (make up starts it when torch is installed)? See "
                         ".local/logs/worker.log") from e
    except subprocess.CalledProcessError as e:
        raise SystemExit("training failed; see `visionpipe status` and .local/logs/worker.log"
                         ) from e
    visionpipe(console, "metrics", project, "--iteration", started["id"], "--out", str(data))
    visionpipe(console, "publish", project, "--iteration", started["id"], "--name", project,
               "--overwrite")
    visionpipe(console, "predict", project, str(held))
    visionpipe(console, "quarantine", project)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The whole loop on a generated sample set.")
    parser.add_argument("--project", default="demo")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the drop-folder pipeline")
    parser.add_argument("--training-timeout", type=float, default=900.0)
    parser.add_argument("--skip-drop", action="store_true", help="only the CLI loop")
    args = parser.parse_args(argv)
    from visionpipe.local.host import apply_settings, load_local_settings
    from visionpipe.local.stack import SETTINGS, STATE

    apply_settings(load_local_settings(SETTINGS))
    console = Console()
    if not args.skip_drop:
        console.rule("[bold]the drop folder")
        if not run(args.project, args.timeout, console):
            raise SystemExit("some files did not end as expected (see the table)")
    cli_loop(args.project, STATE / "demo-data", args.training_timeout, console)
    console.print(portal_hint())


def portal_hint() -> str:
    """Where the browser portal is, and which key it asks for (named, never printed)."""
    from visionpipe.local.stack import HOST_PORT

    return (f"\n[bold]The portal:[/] http://127.0.0.1:{HOST_PORT}/portal/ (sign in with "
            f"{names.SETTING_TRAINING_KEY} from local.settings.json)")


if __name__ == "__main__":
    main()
