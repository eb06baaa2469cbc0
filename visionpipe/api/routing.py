"""The app's own route table, read from the registered HTTP triggers, for requests no route took.

The Functions host answers a request no trigger matches with an empty 404, which the Custom
Vision SDK cannot read (it raises ``TypeError`` instead of ``CustomVisionErrorException``). So the
app registers a catch-all ``customvision/{*rest}`` of the lowest precedence
(``functions/fallback_api.py``) and answers from here: 405 when the path is served for another
method, 404 otherwise, both in Custom Vision's error shape.

Templates are matched as ASP.NET routing (which the Functions host uses) matches them: segment by
segment, case-insensitively; ``{name}``, ``{name:constraint}``, ``{name?}`` and ``{*rest}``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from visionpipe.api.errors import ApiError

#: Every method the Functions host routes (azure.functions.HttpMethod).
ALL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]+)?(\??)\}")


@dataclass(frozen=True)
class RouteTemplate:
    """One HTTP trigger's route template and methods (None: every method)."""

    template: str
    methods: frozenset[str] | None
    catch_all: bool = field(init=False)
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts: list[str] = []
        catch_all = False
        for segment in self.template.strip("/").split("/"):
            m = _PARAM.fullmatch(segment)
            if m is None:
                parts.append("/" + re.escape(segment))
            elif m.group(1):
                parts.append("(?:/.*)?")
                catch_all = True
            elif m.group(3):
                parts.append("(?:/[^/]+)?")
            else:
                parts.append("/[^/]+")
        object.__setattr__(self, "catch_all", catch_all)
        object.__setattr__(self, "_pattern",
                           re.compile("".join(parts) + "/?", re.IGNORECASE))

    def matches(self, path: str) -> bool:
        return self._pattern.fullmatch("/" + path.strip("/")) is not None


def registered_routes(app: Any) -> list[RouteTemplate]:
    """The HTTP routes registered on ``app`` (an ``azure.functions.FunctionApp``).

    Read from the app's function builders, not ``app.get_functions()``: the worker calls that
    once at indexing and a second call raises (duplicate function names).
    """
    out = []
    for builder in getattr(app, "_function_builders", []):
        trigger = builder._function.get_trigger()
        if trigger is None or trigger.get_binding_name() != "httpTrigger":
            continue
        spec = trigger.get_dict_repr()
        route = spec.get("route") or builder._function.get_function_name()
        methods = spec.get("methods")
        allowed = (frozenset(str(getattr(m, "value", m)).upper() for m in methods)
                   if methods else None)
        out.append(RouteTemplate(str(route), allowed))
    return out


def app_routes(module_name: str = "function_app") -> list[RouteTemplate]:
    """The routes of the running Function app (``function_app.app``, already imported by the
    worker or the local host when a request arrives); [] when there is none."""
    module = sys.modules.get(module_name)
    return registered_routes(module.app) if module is not None and hasattr(module, "app") else []


def allowed_methods(path: str, routes: Iterable[RouteTemplate]) -> frozenset[str]:
    """The methods the routes (catch-alls aside) serve ``path`` with; empty: no route has it."""
    allowed: set[str] = set()
    for route in routes:
        if not route.catch_all and route.matches(path):
            allowed |= route.methods or ALL_METHODS
    return frozenset(allowed)


def unrouted(method: str, allowed: frozenset[str]) -> ApiError:
    """The error for a request no route took: 405 when the path is served for other methods
    (``allowed``, from :func:`allowed_methods`), else 404 ``NotFound``."""
    method = method.upper()
    if allowed and method not in allowed:
        listed = ", ".join(sorted(allowed))
        return ApiError(405, "MethodNotAllowed",
                        f"{method} is not supported at this address; it accepts {listed}")
    return ApiError(404, "NotFound",
                    "No operation at this address: check the API version and the path "
                    "(see README, 'What is not supported (yet)')")
