"""``make demo``: drop a generated sample set into the local stack and show what became of it.

Good pictures of a few tags plus deliberately bad files go into the ``training-images`` drop
folder, exactly as a user would drop them; the table shows each file's fate (labelled, or
quarantined with its reason).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from visionpipe import names
from visionpipe.label_store import LabelStore
from visionpipe.local.samples import bad_files, make_image
from visionpipe.quarantine import REASON_SUFFIX, quarantine_path
from visionpipe.storage import Storage, get_storage

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Drop a generated sample set and report.")
    parser.add_argument("--project", default="demo")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    from visionpipe.local.host import apply_settings, load_local_settings
    from visionpipe.local.stack import SETTINGS

    apply_settings(load_local_settings(SETTINGS))
    if not run(args.project, args.timeout, Console()):
        raise SystemExit("some files did not end as expected (see the table)")


if __name__ == "__main__":
    main()
