"""HTTP triggers: ASP.NET-style route templates, function keys and the ASGI app serving them."""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import azure.functions as func
from azure.functions import _abc as func_abc
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from devstack.host_invoke import FunctionSpec, HostError, Invoker

logger = logging.getLogger(__name__)

# The platform's front end refuses larger requests before they reach the host.
MAX_REQUEST_BYTES = 100 * 1024 * 1024
HTTP_REASON = "This function was programmatically called via the host APIs."

Check = Callable[[str], bool]
# App Service's front end sets it on every request to the caller's address and port, replacing
# any the caller sent (Azure/app-service-linux-docs, Things_You_Should_Know/headers.md).
CLIENT_IP_HEADER = "client-ip"


def _int_between(low: int, high: int) -> Check:
    def check(value: str) -> bool:
        return re.fullmatch(r"[+-]?\d+", value) is not None and low <= int(value) <= high

    return check


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _ints(args: str | None, count: int) -> list[int]:
    parts = [int(a) for a in (args or "").split(",") if a.strip()]
    if len(parts) != count:
        raise ValueError(f"expects {count} integer argument(s)")
    return parts


def _length(args: str | None) -> Check:
    parts = [int(a) for a in (args or "").split(",") if a.strip()]
    low, high = (parts[0], parts[0]) if len(parts) == 1 else _ints(args, 2)
    return lambda v: low <= len(v) <= high


def _regex(args: str | None) -> Check:
    pattern = re.compile(args or "", re.IGNORECASE)
    return lambda v: pattern.search(v) is not None


_INT32 = 2**31
_INT64 = 2**63
# ASP.NET Core route constraints, by name; each takes the text in parentheses.
CONSTRAINTS: dict[str, Callable[[str | None], Check]] = {
    "int": lambda _: _int_between(-_INT32, _INT32 - 1),
    "long": lambda _: _int_between(-_INT64, _INT64 - 1),
    "bool": lambda _: lambda v: v.lower() in ("true", "false"),
    "guid": lambda _: _is_guid,
    "alpha": lambda _: lambda v: re.fullmatch(r"[A-Za-z]+", v) is not None,
    "double": lambda _: _is_float,
    "float": lambda _: _is_float,
    "decimal": lambda _: _is_float,
    "datetime": lambda _: _is_datetime,
    "min": lambda a: _int_between(_ints(a, 1)[0], _INT64),
    "max": lambda a: _int_between(-_INT64, _ints(a, 1)[0]),
    "range": lambda a: _int_between(*_ints(a, 2)),
    "length": _length,
    "minlength": lambda a: lambda v: len(v) >= _ints(a, 1)[0],
    "maxlength": lambda a: lambda v: len(v) <= _ints(a, 1)[0],
    "regex": _regex,
}


@dataclass(frozen=True)
class _Param:
    name: str
    checks: tuple[Check, ...]
    optional: bool
    default: str | None
    catch_all: bool


def _closing_parenthesis(text: str, template: str) -> int:
    """Index of the parenthesis closing the one `text` starts with."""
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return index
    raise HostError(f"Route '{template}': unbalanced parentheses")


def _parse_param(body: str, template: str) -> _Param:
    """Parse `name[:constraint[(args)]]...[=default][?]`, or `*name` for a catch-all."""
    stars = len(body) - len(body.lstrip("*"))
    match = re.match(r"\w+", body[stars:])
    if match is None:
        raise HostError(f"Route '{template}': parameter '{{{body}}}' has no name")
    name, rest = match.group(), body[stars + match.end() :]
    checks: list[Check] = []
    while rest.startswith(":"):
        c = re.match(r":(\w+)", rest)
        if c is None:
            raise HostError(f"Route '{template}': bad constraint in '{{{body}}}'")
        rest, args = rest[c.end() :], None
        if rest.startswith("("):
            end = _closing_parenthesis(rest, template)
            args, rest = rest[1:end], rest[end + 1 :]
        factory = CONSTRAINTS.get(c.group(1).lower())
        if factory is None:
            raise HostError(f"Route '{template}': unknown constraint '{c.group(1)}'")
        try:
            checks.append(factory(args))
        except (ValueError, re.error) as exc:
            raise HostError(f"Route '{template}': constraint '{c.group(1)}': {exc}") from exc
    optional = rest.endswith("?")
    rest = rest.removesuffix("?")
    default = rest[1:] if rest.startswith("=") else None
    if rest and default is None:
        raise HostError(f"Route '{template}': cannot parse '{{{body}}}'")
    return _Param(name, tuple(checks), optional or default is not None, default, stars > 0)


class RouteTemplate:
    """An ASP.NET Core route template such as `v1/messages/{id:int}/{part?}`."""

    def __init__(self, template: str) -> None:
        self.template = template.strip("/")
        self._params: dict[str, _Param] = {}
        pattern = ""
        ranks: list[int] = []
        segments = self.template.split("/") if self.template else []
        for index, segment in enumerate(segments):
            parts = re.split(r"(\{[^{}]*\})", segment)
            pieces = [p for p in parts if p]
            if len(pieces) == 1 and pieces[0].startswith("{"):
                param = self._add(pieces[0][1:-1])
                if param.catch_all and index != len(segments) - 1:
                    raise HostError(f"Route '{template}': a catch-all must be the last segment")
                group = f"(?P<p{len(self._params) - 1}>{'.*' if param.catch_all else '[^/]+'})"
                optional = param.optional or param.catch_all
                pattern += f"(?:/{group})?" if optional else f"/{group}"
                ranks.append(4 if param.catch_all else 3 if not param.checks else 2)
                continue
            regex = ""
            for piece in pieces:
                if piece.startswith("{"):
                    param = self._add(piece[1:-1])
                    if param.optional or param.catch_all:
                        raise HostError(
                            f"Route '{template}': optional and catch-all parameters"
                            " must fill a whole segment"
                        )
                    regex += f"(?P<p{len(self._params) - 1}>[^/]+?)"
                else:
                    regex += re.escape(piece)
            pattern += "/" + regex
            ranks.append(0 if len(pieces) == 1 else 1)
        self._regex = re.compile(f"{pattern}/?", re.IGNORECASE)
        # Literal segments beat constrained parameters, which beat plain ones, as in ASP.NET.
        self.precedence = tuple(ranks)

    def _add(self, body: str) -> _Param:
        param = _parse_param(body, self.template)
        if param.name.lower() in (n.lower() for n in self._params):
            raise HostError(f"Route '{self.template}': parameter '{param.name}' appears twice")
        self._params[param.name] = param
        return param

    def match(self, path: str) -> dict[str, str] | None:
        """Route parameters if `path` (after the route prefix) matches, else None."""
        found = self._regex.fullmatch("/" + path.strip("/") if path.strip("/") else "")
        if found is None:
            return None
        values: dict[str, str] = {}
        for index, (name, param) in enumerate(self._params.items()):
            value = found.group(f"p{index}")
            if value is None or value == "":
                if param.default is not None:
                    values[name] = param.default
                continue
            if not all(check(value) for check in param.checks):
                return None
            values[name] = value
        return values


def normalize_auth_level(level: Any) -> str:
    """`anonymous`, `function` or `admin` from an AuthLevel enum or a string."""
    text = str(getattr(level, "value", level) or "function").lower()
    if text not in ("anonymous", "function", "admin"):
        raise HostError(f"Unknown auth level '{level}'")
    return text


def normalize_methods(methods: Iterable[Any] | None) -> frozenset[str] | None:
    """Upper-case method names from HttpMethod enums or strings; None means any method."""
    if not methods:
        return None
    return frozenset(str(getattr(m, "value", m)).upper() for m in methods)


def is_authorized(
    level: str, presented: str | None, function_key: str | None, admin_key: str | None
) -> bool:
    """Whether a presented key opens a route of this auth level (admin key opens all)."""
    if level == "anonymous":
        return True
    if not presented:
        return False
    key = presented.encode()
    if admin_key and hmac.compare_digest(key, admin_key.encode()):
        return True
    return bool(
        level == "function" and function_key and hmac.compare_digest(key, function_key.encode())
    )


@dataclass(frozen=True)
class HttpRoute:
    """One HTTP-triggered function and how it is reached."""

    spec: FunctionSpec
    template: RouteTemplate
    methods: frozenset[str] | None
    auth_level: str
    param_name: str


def _joined(pairs: Iterable[tuple[str, str]], lower: bool = False) -> dict[str, str]:
    """Collapse repeated names into one comma-joined value, as the host does."""
    values: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower() if lower else name
        values[key] = f"{values[key]},{value}" if key in values else value
    return values


def _client_ip(request: Request) -> str:
    """The peer as the front end writes it: `ip:port`, an IPv6 address in brackets."""
    if request.client is None:
        return ""
    host, port = request.client.host, request.client.port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def to_response(result: Any) -> Response:
    """Translate what a function returned into the HTTP response the worker would send."""
    if isinstance(result, func_abc.HttpResponse):
        headers = [(str(k), str(v)) for k, v in result.headers.items()]
        names = {k.lower() for k, _ in headers}
        if "content-type" not in names:
            mimetype = result.mimetype
            charset = f"; charset={result.charset}" if mimetype.startswith("text/") else ""
            headers.append(("content-type", f"{mimetype}{charset}"))
        response = Response(content=result.get_body(), status_code=result.status_code)
        skip = {"content-length", "transfer-encoding"}
        response.raw_headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in headers
            if k.lower() not in skip
        )
        return response
    if isinstance(result, str):
        return Response(content=result, media_type="text/plain; charset=utf-8")
    if result is None:
        return Response(status_code=204)
    logger.error("HTTP function returned %s, not an HttpResponse or str", type(result).__name__)
    return Response(status_code=500)


class HttpApp:
    """ASGI app dispatching requests to HTTP-triggered functions."""

    def __init__(
        self,
        routes: list[HttpRoute],
        route_prefix: str,
        invoker: Invoker,
        settings: Mapping[str, str],
    ) -> None:
        self._routes = sorted(routes, key=lambda r: r.template.precedence)
        self._prefix = route_prefix.strip("/")
        self._invoker = invoker
        self._function_key = settings.get("LOCAL_FUNCTION_KEY") or None
        self._admin_key = settings.get("LOCAL_ADMIN_KEY") or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (HTTP only: lifespan is off)."""
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._handle(request)
        await response(scope, receive, send)

    def _relative_path(self, path: str) -> str | None:
        path = path.strip("/")
        if not self._prefix:
            return path
        prefix = self._prefix.lower()
        if path.lower() == prefix:
            return ""
        if path.lower().startswith(prefix + "/"):
            return path[len(prefix) + 1 :]
        return None

    async def _handle(self, request: Request) -> Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return Response(status_code=413)
        relative = self._relative_path(request.url.path)
        method = request.method.upper()
        chosen = None
        if relative is not None:
            chosen = self._match(relative, method)
        if chosen is None:
            return Response(status_code=404)
        route, route_params = chosen
        key = request.headers.get("x-functions-key") or request.query_params.get("code")
        if not is_authorized(route.auth_level, key, self._function_key, self._admin_key):
            logger.info(
                "Refused %s %s: Functions.%s needs a valid %s key",
                method,
                request.url.path,
                route.spec.name,
                route.auth_level,
            )
            return Response(status_code=401)
        body = await self._read_body(request)
        if body is None:
            return Response(status_code=413)
        headers = _joined(
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw),
            lower=True,
        )
        headers[CLIENT_IP_HEADER] = _client_ip(request)
        http_request = func.HttpRequest(
            method=method,
            url=str(request.url),
            headers=headers,
            params=_joined(request.query_params.multi_items()),
            route_params=route_params,
            body=body,
        )
        try:
            result = await self._invoker.invoke(
                route.spec, lambda: {route.param_name: http_request}, HTTP_REASON
            )
        except Exception:
            # The invoker has logged the traceback, as the host does.
            return Response(status_code=500)
        return to_response(result)

    def _match(self, path: str, method: str) -> tuple[HttpRoute, dict[str, str]] | None:
        """The first route whose template and methods both match, as the host routes.

        The host registers each HTTP function as a route whose methods are a route constraint
        (Azure/azure-functions-host, WebScriptHostHttpRoutesManager.cs: `new
        HttpMethodRouteConstraint(httpTrigger.Methods)`), and ASP.NET Core's constraint accepts
        only a listed method, case-insensitively, HEAD not implied by GET
        (dotnet/aspnetcore, HttpMethodRouteConstraint.cs). A request in no route's list falls
        through the router: 404, never 405 with an Allow header.
        """
        for route in self._routes:
            if route.methods is not None and method not in route.methods:
                continue
            params = route.template.match(path)
            if params is not None:
                return route, params
        return None

    @staticmethod
    async def _read_body(request: Request) -> bytes | None:
        """The request body, or None past the size limit (a chunked body has no length)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_REQUEST_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
