"""The one way visionpipe fetches a URL a client gave it (``images/urls``, ``quicktest/url``),
without becoming a proxy into the private network (SSRF) or a port scanner.

- Only ``http``/``https`` without credentials; the host is resolved once and every address it
  resolves to must be public (not loopback, private, link-local -- the cloud metadata endpoint
  169.254.169.254 --, shared, reserved or multicast) unless it lies in a network the operator
  allows with ``URL_FETCH_ALLOWED_NETWORKS`` (comma-separated CIDRs; empty by default).
- The connection goes to the address that was checked (no second DNS lookup to rebind), and
  redirects are followed by hand and checked again.
- The whole fetch -- resolution, connection, headers and body, over every redirect -- ends within
  ``URL_FETCH_TIMEOUT_SECONDS``: a watchdog shuts the socket at the deadline, so a server that
  drips one byte a second cannot hold a worker past it.
- What the client is told never depends on the target: a private host, a closed port, a 404, a
  reset or a timeout all read :data:`UNREACHABLE`, so the error text cannot map a network. The
  real reason goes to the log for the operator.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from urllib.parse import SplitResult, urljoin, urlsplit

from visionpipe import names

log = logging.getLogger(__name__)

SETTING_ALLOWED_NETWORKS = names.SETTING_URL_FETCH_ALLOWED_NETWORKS
MAX_REDIRECTS = 3
MAX_URL_LENGTH = 4096
_CHUNK = 64 * 1024
#: The one message for every failure that depends on the target (see the module docstring).
UNREACHABLE = "The image could not be fetched from the URL"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# DNS lookups cannot be given a timeout; they run here so the caller can stop waiting.
_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="visionpipe-dns")


class FetchError(Exception):
    """The URL could not be fetched, or may not be; the message is safe to show a client."""


class _Refused(Exception):
    """Internal: why a fetch failed, for the log only (the client gets :data:`UNREACHABLE`)."""


def timeout_seconds() -> float:
    from visionpipe.settings import get_settings

    return get_settings().url_fetch_timeout_seconds


def allowed_networks() -> tuple[Network, ...]:
    """The operator's exceptions to the public-address rule (``URL_FETCH_ALLOWED_NETWORKS``)."""
    from visionpipe.settings import get_settings

    return tuple(ipaddress.ip_network(n, strict=False)
                 for n in get_settings().url_fetch_allowed_networks)


def is_allowed_address(address: IPAddress, allowed: tuple[Network, ...] = ()) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allowed):
        return True
    return address.is_global and not address.is_multicast


def _resolve(host: str, port: int, deadline: float) -> IPAddress:
    future = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout as e:
        raise _Refused(f"resolving {host!r} timed out") from e
    except (OSError, UnicodeError, ValueError) as e:
        raise _Refused(f"cannot resolve {host!r}: {e}") from e
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise _Refused(f"{host!r} resolves to nothing")
    allowed = allowed_networks()
    refused = [a for a in addresses if not is_allowed_address(a, allowed)]
    if refused:
        raise _Refused(f"{host!r} resolves to a non-public address ({refused[0]})")
    return addresses[0]


class _Watchdog:
    """Shuts the current socket down at the deadline, whatever the reading thread is blocked on
    (a header line that never ends, a body that drips)."""

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.fired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._sock is not None:
                self._shut(self._sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float,
                 watchdog: _Watchdog) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._watchdog = watchdog

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self._watchdog.watch(sock)
        return sock

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPS(_PinnedHTTP):
    default_port = 443

    def connect(self) -> None:
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self._open(), server_hostname=self.host)


def _parts(url: object) -> SplitResult:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise FetchError(f"the URL must be a string of 1 to {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError as e:  # "http://[::1", "http://h:99999"
        raise FetchError("the URL is not valid") from e
    if parts.scheme not in ("http", "https") or not hostname:
        raise FetchError("only http and https URLs with a host are accepted")
    if parts.username or parts.password:
        raise FetchError("URLs with credentials are not accepted")
    if port == 0:
        raise FetchError("the URL is not valid")
    return parts


def fetch(url: object, max_bytes: int, timeout: float | None = None) -> bytes:
    """The body at ``url`` (at most ``max_bytes``), or :class:`FetchError`.

    ``timeout`` (default: the ``URL_FETCH_TIMEOUT_SECONDS`` setting) bounds the whole fetch.
    """
    timeout = timeout_seconds() if timeout is None else timeout
    _parts(url)  # a malformed URL is the client's mistake: say so before anything else
    deadline = time.monotonic() + timeout
    watchdog = _Watchdog(deadline)
    try:
        return _fetch(str(url), max_bytes, deadline, watchdog)
    except _Refused as e:
        log.info("URL fetch refused or failed: %s", e)
        raise FetchError(UNREACHABLE) from None
    finally:
        watchdog.cancel()


def _fetch(url: str, max_bytes: int, deadline: float, watchdog: _Watchdog) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        try:
            parts = _parts(url)
        except FetchError as e:  # a redirect to somewhere we would not go
            raise _Refused(f"redirect to a refused URL: {e}") from e
        hostname = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = _resolve(hostname, port, deadline)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Refused("timed out")
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = cls(hostname, port, str(address), remaining, watchdog)
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn.request("GET", path, headers={"User-Agent": "visionpipe", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise _Refused(f"HTTP {response.status} without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise _Refused(f"HTTP {response.status}")
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"the image is over the limit of {max_bytes:,} bytes")
            chunks, total = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise _Refused("timed out reading the body")
                chunk = response.read1(_CHUNK)  # whatever arrived: a drip cannot stall a loop
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError(f"the image is over the limit of {max_bytes:,} bytes")
                chunks.append(chunk)
            if length and length.isdigit() and total < int(length):
                raise _Refused("the body ended early")
            if watchdog.fired or time.monotonic() > deadline:
                raise _Refused("timed out")  # the watchdog's shutdown can look like an EOF
            return b"".join(chunks)
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise _Refused(f"{type(e).__name__}: {e}") from e
        finally:
            conn.close()
    raise _Refused(f"more than {MAX_REDIRECTS} redirects")


def fetch_image(url: object, max_bytes: int) -> bytes:
    """:func:`fetch` for an API route: refusals as a 400 ``BadRequestImageUrl``."""
    from visionpipe.api import errors as api_errors

    try:
        return fetch(url, max_bytes)
    except FetchError as e:
        raise api_errors.bad_request("BadRequestImageUrl", str(e)) from e
