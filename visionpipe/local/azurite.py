"""Start and stop Azurite (the npm package pinned in package.json) on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from visionpipe.settings import azurite_connection_string

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@dataclass
class Azurite:
    """A running Azurite process."""

    process: subprocess.Popen[bytes]
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return azurite_connection_string("127.0.0.1", self.blob_port, self.queue_port,
                                         self.table_port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                # Azurite may linger on open client connections; its state is disposable.
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_azurite(
    location: Path,
    blob_port: int = 10000,
    queue_port: int = 10001,
    table_port: int = 10002,
    log_file: Path | None = None,
    in_memory: bool = False,
) -> Azurite:
    """Start Azurite and return once all three services accept connections."""
    if not AZURITE_BIN.exists():
        raise FileNotFoundError(f"{AZURITE_BIN} is missing: run `make setup` (npm ci)")
    location.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(AZURITE_BIN),
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--blobHost", "127.0.0.1", "--blobPort", str(blob_port),
        "--queueHost", "127.0.0.1", "--queuePort", str(queue_port),
        "--tableHost", "127.0.0.1", "--tablePort", str(table_port),
    ]
    # Persisted state lives under `location`; in memory (tests), only Azurite's debug files do.
    cmd += ["--inMemoryPersistence"] if in_memory else ["--location", str(location)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    azurite = Azurite(process, blob_port, queue_port, table_port)
    try:
        for port in (blob_port, queue_port, table_port):
            wait_for_port(port)
    except TimeoutError:
        azurite.stop()
        raise
    return azurite
