"""Fetch the default backbone's pretrained ImageNet weights once, for the local CPU worker.

``make setup`` runs this. The container image bakes the weights in at build time
(``python -m training_job.model bake``); a laptop has no such step, so without this the local
worker always trains from a random init ("much less accurate", ~50 % confidences in the demo).
The file goes where the job already looks (training_job.model.USER_WEIGHTS_DIR, used when the
baked-in folder has none). Offline (or behind a proxy that refuses), it says so in one line and
exits 0 within ``--timeout`` seconds: setup goes on, the worker logs that it uses a random init.

Run from the repository root:  python scripts/fetch_weights.py [--backbone NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: torchvision names its files ``{name}-{first hex digits of the sha256}.pth``
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")
MAX_BYTES = 512 * 1024 * 1024


def default_url(backbone: str) -> str:
    import torchvision

    return str(torchvision.models.get_model_weights(backbone).DEFAULT.url)


def _download(url: str, timeout: float) -> bytes:
    """The body at ``url``; TimeoutError when no answer (DNS included, which the socket timeout
    does not cover) came within ``timeout`` seconds. Once the server answers, a slow download
    goes on (each read still times out after ``timeout`` seconds of silence)."""
    import threading

    answered = threading.Event()
    result: dict[str, object] = {}

    def get() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
                answered.set()
                result["data"] = response.read(MAX_BYTES + 1)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e
        finally:
            answered.set()

    thread = threading.Thread(target=get, name="fetch-weights", daemon=True)
    thread.start()
    if not answered.wait(timeout):
        raise TimeoutError(f"no answer within {timeout:g}s")
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["data"]  # type: ignore[return-value]


def fetch(backbone: str, out_dir: Path, url: str | None, timeout: float) -> tuple[bool, str]:
    """``(ok, one line to print)``; never raises for network trouble or a bad download."""
    from training_job.model import build_model, weights_file

    target = weights_file(out_dir, backbone)
    if target.is_file():
        return True, f"pretrained weights for {backbone}: already in {target}"
    try:
        url = url or default_url(backbone)
    except Exception as e:  # noqa: BLE001 - an unknown backbone, a torchvision without it
        return False, f"pretrained weights for {backbone}: no download known ({e})"
    started = time.monotonic()
    try:
        data = _download(url, timeout)
    except Exception as e:  # noqa: BLE001 - offline, refused, timed out: all the same to setup
        return False, (f"offline: could not fetch pretrained weights for {backbone} "
                       f"({type(e).__name__}); the local worker will train from a random init "
                       "until `make setup` can reach the network")
    if len(data) > MAX_BYTES:
        return False, f"pretrained weights for {backbone}: the download is too large; skipped"
    expected = _HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
    if expected and not hashlib.sha256(data).hexdigest().startswith(expected.group(1)):
        return False, f"pretrained weights for {backbone}: checksum mismatch; skipped"
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            build_model(backbone, 2, Path(tmp))  # loads the file: it must fit the backbone
        except Exception as e:  # noqa: BLE001 - not weights of this backbone
            return False, (f"pretrained weights for {backbone}: the download is not usable "
                           f"({type(e).__name__}); skipped")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {"backbone": backbone, "url": url, "sha256": hashlib.sha256(data).hexdigest(),
            "seconds": round(time.monotonic() - started, 2)}
    (out_dir / f"{backbone}.json").write_text(json.dumps(meta, indent=2))
    return True, f"pretrained weights for {backbone}: fetched into {target}"


def main(argv: list[str] | None = None) -> int:
    from training_job.model import DEFAULT_BACKBONE, USER_WEIGHTS_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--dir", type=Path, default=USER_WEIGHTS_DIR)
    p.add_argument("--url", default=None, help="default: torchvision's URL for the backbone")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for the connection")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # build_model's RANDOM INIT warning is not news here
    _, line = fetch(args.backbone, args.dir, args.url, args.timeout)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
