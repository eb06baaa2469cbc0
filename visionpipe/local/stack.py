"""``make up`` / ``make down``: the local stack as background processes (ARCHITECTURE.md, "Local
stack").

Azurite, the local Functions host (127.0.0.1:7071), the Event Grid bridge and the training worker
each run as their own process group, with logs and pids under ``.local/``. ``up`` returns once
``GET /health`` answers 200. With ``LOCAL_EVENT_WEBHOOKS`` set in ``local.settings.json``, the
webhook delivery (:mod:`visionpipe.local.webhooks`) runs too: the lifecycle events reach those
webhooks as an Event Grid subscription would deliver them in Azure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx

from visionpipe.local.azurite import start_azurite, wait_for_port
from visionpipe.local.host import REPO, load_local_settings

STATE = REPO / ".local"
LOGS = STATE / "logs"
PIDS = STATE / "pids.json"
SETTINGS = REPO / "local.settings.json"
TEMPLATE = REPO / "local.settings.json.template"
HOST_PORT = 7071
AZURITE_PORTS = (10000, 10001, 10002)


def init_settings() -> Path:
    """Create ``local.settings.json`` from the template, with fresh random local keys."""
    if SETTINGS.exists():
        return SETTINGS
    values = json.loads(TEMPLATE.read_text())
    for key, value in values["Values"].items():
        if value == "__GENERATED__":
            values["Values"][key] = secrets.token_hex(16)
    SETTINGS.write_text(json.dumps(values, indent=2) + "\n")
    print(f"created {SETTINGS.name} with fresh local keys")
    return SETTINGS


def _running() -> dict[str, int]:
    if not PIDS.exists():
        return {}
    pids = {name: int(pid) for name, pid in json.loads(PIDS.read_text()).items()}
    alive = {}
    for name, pid in pids.items():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive[name] = pid
    return alive


def _spawn(name: str, args: list[str], env: dict[str, str]) -> int:
    log = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    return process.pid


def webhooks_wanted(env: dict[str, str]) -> bool:
    """Whether the settings declare a local webhook subscription (LOCAL_EVENT_WEBHOOKS)."""
    from visionpipe import names

    return bool(env.get(names.SETTING_LOCAL_EVENT_WEBHOOKS, "").strip())


def _port_open(port: int) -> bool:
    try:
        wait_for_port(port, timeout=0.2)
    except TimeoutError:
        return False
    return True


def up(timeout: float = 90.0) -> None:
    init_settings()
    LOGS.mkdir(parents=True, exist_ok=True)
    running = _running()
    env = {**os.environ, **load_local_settings(SETTINGS), "PYTHONUNBUFFERED": "1"}
    python = sys.executable

    if "azurite" not in running and not _port_open(AZURITE_PORTS[0]):
        azurite = start_azurite(STATE / "azurite", *AZURITE_PORTS,
                                log_file=LOGS / "azurite.log")
        running["azurite"] = azurite.process.pid
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    from visionpipe.settings import reset_settings
    from visionpipe.storage import get_storage

    reset_settings()
    get_storage().ensure_resources()

    if "host" not in running:
        running["host"] = _spawn("host", [python, "-m", "visionpipe.local.host",
                                          "--port", str(HOST_PORT)], env)
    if "bridge" not in running:
        running["bridge"] = _spawn("bridge", [python, "-m", "visionpipe.local.bridge",
                                              "--endpoint", f"http://127.0.0.1:{HOST_PORT}"], env)
    if "worker" not in running and importlib.util.find_spec("torch") is not None:
        # VISIONPIPE_WORKER_ARGS: extra training options for the local worker (e.g. a smaller
        # backbone for a quick CI run of the demo); see `python -m training_job --help`.
        extra = shlex.split(os.environ.get("VISIONPIPE_WORKER_ARGS", ""))
        running["worker"] = _spawn("worker", [python, "-m", "training_job", "--watch", *extra],
                                   env)
    if "exporter" not in running and importlib.util.find_spec("onnxruntime") is not None:
        # export-requests: conversions to other platforms (training_job.export_worker)
        running["exporter"] = _spawn("exporter", [python, "-m", "training_job.export_worker",
                                                  "--watch"], env)
    if "webhooks" not in running and webhooks_wanted(env):
        running["webhooks"] = _spawn("webhooks", [python, "-m", "visionpipe.local.webhooks"], env)
    PIDS.write_text(json.dumps(running, indent=2))

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{HOST_PORT}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the local host did not answer /health within {timeout:.0f} s; "
                             f"see {LOGS}/host.log")
        time.sleep(0.3)
    print(f"visionpipe local stack is up: http://127.0.0.1:{HOST_PORT} "
          f"({', '.join(sorted(running))}); logs in {LOGS.relative_to(REPO)}/")


def down() -> None:
    running = _running()
    for name, pid in running.items():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        print(f"stopping {name} ({pid})")
    deadline = time.monotonic() + 15
    for pid in running.values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    PIDS.unlink(missing_ok=True)
    print("visionpipe local stack is down")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the visionpipe local stack.")
    parser.add_argument("command", choices=["init", "up", "down", "status"])
    args = parser.parse_args(argv)
    if args.command == "init":
        init_settings()
    elif args.command == "up":
        up()
    elif args.command == "down":
        down()
    else:
        running = _running()
        print(json.dumps(running, indent=2) if running else "not running")


if __name__ == "__main__":
    main()
