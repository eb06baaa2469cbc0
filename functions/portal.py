"""``GET /portal/{*path}``: the browser portal's static files (``portal/`` at the repository root).

The portal is plain ES modules and CSS with no build step, served by the Function app itself so
that Azure and the local host need no second web server. It talks only to the Custom Vision API
and ``/visionpipe/v1`` with the training key the person enters (kept in ``sessionStorage``).

Why the shape of this module:

- Files are served only from an index built by walking ``portal/`` once: a request names a key
  of that index or gets a 404, so ``..``, encoded slashes, absolute paths and symlinks cannot
  reach anything else (there is no path arithmetic on request input at all).
- Every answer carries a Content-Security-Policy that allows no inline script and no other
  origin, ``X-Content-Type-Options: nosniff`` and ``frame-ancestors 'none'``: names in the portal
  come from users, and the policy is the second wall behind rendering them as text.
- The portal is anonymous (like the API routes, whose key check is in the handler): the files
  hold no secrets and every call they make carries the training key.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import azure.functions as func

bp = func.Blueprint()

PORTAL_DIR = Path(__file__).resolve().parents[1] / "portal"
INDEX = "index.html"
#: The only kinds of file the portal serves; anything else in the folder stays private.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time: a deployment must not leave a browser on half old, half new modules.
    "Cache-Control": "no-cache",
}


@cache
def portal_files(root: Path = PORTAL_DIR) -> dict[str, Path]:
    """Relative POSIX path -> file, for every regular, non-hidden file with a served suffix."""
    files: dict[str, Path] = {}
    if not root.is_dir():
        return files
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_symlink() or not path.is_file() or path.suffix not in CONTENT_TYPES:
            continue
        files[relative.as_posix()] = path
    return files


def resolve(route_path: str | None) -> str | None:
    """The index key a request path names, or None. The path arrives percent-decoded in Azure
    and raw from the local host; decoding once more is harmless because only exact keys match."""
    wanted = unquote(route_path or "").strip("/")
    wanted = wanted or INDEX
    return wanted if wanted in portal_files() else None


def not_found() -> func.HttpResponse:
    body = {"code": "NotFound", "message": "no portal file at this address"}
    headers = {**SECURITY_HEADERS, "Content-Type": "application/json"}
    return func.HttpResponse(json.dumps(body), status_code=404, headers=headers)


@bp.function_name("portal")
@bp.route(route="portal/{*path}", methods=["GET", "HEAD"], auth_level=func.AuthLevel.ANONYMOUS)
def portal(req: func.HttpRequest) -> func.HttpResponse:
    """A portal file by its path under ``portal/``; ``/portal`` and ``/portal/`` are the app."""
    key = resolve(req.route_params.get("path"))
    if key is None:
        return not_found()
    path = portal_files()[key]
    headers = {**SECURITY_HEADERS, "Content-Type": CONTENT_TYPES[path.suffix]}
    return func.HttpResponse(path.read_bytes(), status_code=200, headers=headers)
