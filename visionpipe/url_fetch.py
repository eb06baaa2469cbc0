"""Fetching an image from a URL a client gave us (``images/urls``), without becoming a proxy
into the private network (SSRF).

Only ``http``/``https``; the host is resolved once and every address it resolves to must be
public (not loopback, private, link-local -- the cloud metadata endpoint 169.254.169.254 --,
shared, reserved or multicast) unless it lies in a network the operator allows with the
``URL_FETCH_ALLOWED_NETWORKS`` setting (comma-separated CIDRs; empty by default). The connection
goes to the address that was checked (no second DNS lookup to rebind), redirects are followed by
hand and checked again, and the body is read up to a byte limit within a time limit.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from visionpipe import names

SETTING_ALLOWED_NETWORKS = names.SETTING_URL_FETCH_ALLOWED_NETWORKS
MAX_REDIRECTS = 3
_CHUNK = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """The URL could not be fetched, or may not be; the message says why (safe to show)."""


def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The operator's exceptions to the public-address rule (``URL_FETCH_ALLOWED_NETWORKS``)."""
    from visionpipe.settings import get_settings

    return tuple(ipaddress.ip_network(n, strict=False)
                 for n in get_settings().url_fetch_allowed_networks)


def is_allowed_address(address: IPAddress,
                       allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
                       ) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allowed):
        return True
    return address.is_global and not address.is_multicast


def _resolve(host: str, port: int) -> IPAddress:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FetchError(f"cannot resolve {host!r}") from e
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise FetchError(f"cannot resolve {host!r}")
    allowed = allowed_networks()
    refused = [a for a in addresses if not is_allowed_address(a, allowed)]
    if refused:
        raise FetchError(f"{host!r} resolves to a non-public address ({refused[0]}); refused")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def fetch(url: str, max_bytes: int, timeout: float = 10.0) -> bytes:
    """The body at ``url`` (at most ``max_bytes``), or :class:`FetchError`."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("only http and https URLs with a host are accepted")
        if parts.username or parts.password:
            raise FetchError("URLs with credentials are not accepted")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise FetchError("invalid port") from e
        address = _resolve(parts.hostname, port)
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        remaining = max(0.1, deadline - time.monotonic())
        conn = cls(parts.hostname, port, str(address), remaining)
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn.request("GET", path, headers={"User-Agent": "visionpipe", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"HTTP {response.status} without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise FetchError(f"HTTP {response.status}")
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"the image is {int(length):,} bytes; the limit is "
                                 f"{max_bytes:,}")
            chunks, total = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise FetchError(f"took longer than {timeout:.0f} s")
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError(f"the image is over the limit of {max_bytes:,} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except (OSError, http.client.HTTPException) as e:
            raise FetchError(f"{type(e).__name__}: {e}") from e
        finally:
            conn.close()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")
