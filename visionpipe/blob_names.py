"""Whether a blob name that came from outside (an Event Grid event) may be handed to the SDK.

The storage SDK puts the name into the request URL, and HTTP clients collapse ``.`` and ``..``
segments before sending it. With a SharedKey signature the server then rejects the request, but a
SAS or an Entra token (how the Function app reaches storage in Azure) does not sign the path: the
request silently lands on another blob, even in another container. So a name is judged here, by
this one function, before *any* storage call is made with it; an unsafe name is never used to
address a blob at all (see :func:`visionpipe.stores.quarantine.record_unsafe_name`).

The rules are deliberately wider than traversal alone: anything that some layer might decode or
normalise into a traversal (percent-encoded dots, slashes or percent signs, backslashes, Unicode
compatibility forms of ``.`` and ``/``) is refused too, as are names the service itself would
refuse (over 1,024 characters, empty segments).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

#: Azure's limit on a blob name, in characters.
MAX_NAME_LENGTH = 1024
#: Longest path segment accepted (common file-system limit; a longer one is not a file name).
MAX_SEGMENT_LENGTH = 255
#: A project or tag name (each is one drop-folder segment; the API and the drop folder agree).
MAX_FOLDER_NAME_LENGTH = 256
#: How much of an unsafe name a record keeps (escaped); the digest identifies the whole name.
MAX_ESCAPED_LENGTH = 2048

# %2e '.', %2f '/', %5c '\' and %25 '%' (a double encoding of any of them), any case.
_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c|25)", re.IGNORECASE)


def unsafe_reason(name: str) -> str | None:
    """Why ``name`` must not be used to address a blob, or None when it is safe.

    The answer never contains the name itself (it may hold control characters); callers that
    need to show it use :func:`escape_name`.
    """
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is over {MAX_NAME_LENGTH} characters"
    if any(_is_control(c) for c in name):
        return "the name contains a control character"
    if "\\" in name:
        return "the name contains a backslash"
    if name.startswith("/"):
        return "the name starts with '/'"
    if _ENCODED_SEPARATOR.search(name):
        return "the name contains a percent-encoded '.', '/', '\\' or '%'"
    for form in dict.fromkeys((name, unicodedata.normalize("NFKC", name))):
        if "\\" in form:
            return "the name contains a character equivalent to a backslash"
        for segment in form.split("/"):
            if segment == "":
                return "the name has an empty segment ('//' or a trailing '/')"
            if segment in (".", ".."):
                return "the name has a '.' or '..' segment"
    if any(len(segment) > MAX_SEGMENT_LENGTH for segment in name.split("/")):
        return f"a segment of the name is over {MAX_SEGMENT_LENGTH} characters"
    return None


def folder_name_problem(name: str | None) -> str | None:
    """Why ``name`` cannot be a project or tag name, or None when it can.

    Project and tag names are drop-folder segments (``training-images/{project}/{tag}/...``), so
    one rule serves the API (which refuses the name) and the drop folder (which quarantines the
    image): not empty, no outer spaces, at most 256 characters, and a safe single segment."""
    if name is None or not name.strip():
        return "is empty"
    if name != name.strip():
        return "has outer spaces"
    if len(name) > MAX_FOLDER_NAME_LENGTH:
        return f"is over {MAX_FOLDER_NAME_LENGTH} characters"
    if "/" in name or unsafe_reason(name) is not None:
        return "cannot be a folder name ('/', '\\', '.', '..', encoded dots or a control character)"
    return None


def is_safe_blob_name(name: str) -> bool:
    """True when :func:`unsafe_reason` finds nothing wrong with ``name``."""
    return unsafe_reason(name) is None


def name_digest(name: str) -> str:
    """SHA-256 (hex) of the name as given, lone surrogates included: a stable, safe handle."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def escape_name(name: str) -> str:
    """The name with every non-printable character and backslash written as a Python escape,
    cut to :data:`MAX_ESCAPED_LENGTH`: safe to store, log and print on a terminal."""
    out = []
    for c in name:
        if c == "\\":
            out.append("\\\\")
        elif c.isprintable() and not _is_surrogate(c):
            out.append(c)
        else:
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    escaped = "".join(out)
    if len(escaped) > MAX_ESCAPED_LENGTH:
        escaped = escaped[:MAX_ESCAPED_LENGTH] + "..."
    return escaped


def _is_control(c: str) -> bool:
    # Cc: C0, DEL and C1; surrogates (Cs) cannot be encoded in a URL; line/paragraph separators
    # and other format characters (bidi overrides) disguise a name in logs and listings.
    return unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI_CONTROLS


def _is_surrogate(c: str) -> bool:
    return 0xD800 <= ord(c) <= 0xDFFF


_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
