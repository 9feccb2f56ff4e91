"""Local Azure Functions host for the Python v2 programming model (HTTP, queue, timer triggers).

Core Tools cannot run here, so this stands in for `func start`:

    python -m devstack.host [--app-dir DIR] [--host 127.0.0.1] [--port 7071]

It merges `local.settings.json` Values into the environment (environment variables win),
sets up the Azure Monitor exporter where the Python worker would (host_telemetry.py), imports
`function_app.py`, and serves every function from its own binding metadata. Sync functions
share a thread pool of PYTHON_THREADPOOL_THREAD_COUNT threads (default 1000, what the
Functions host gives the worker when the setting is absent); async ones run on the event loop.
FUNCTION-level routes need the key in LOCAL_FUNCTION_KEY (or LOCAL_ADMIN_KEY), ADMIN-level ones
LOCAL_ADMIN_KEY. Timer schedules run in UTC; LOCAL_TIMER_SCHEDULE_<function name> replaces a
function's schedule.
Readiness: the log lines `Listening on http://HOST:PORT` then `Host started`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Generator, Iterable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import azure.functions as func
import uvicorn

from devstack.host_http import (
    HttpApp,
    HttpRoute,
    RouteTemplate,
    normalize_auth_level,
    normalize_methods,
)
from devstack.host_invoke import (
    CONTEXT_PARAM,
    FunctionSpec,
    HostError,
    Invoker,
    default_thread_count,
)
from devstack.host_queue import (
    MESSAGE_HOLD_SECONDS,
    QueueListener,
    QueueOptions,
    create_clients,
    normalize_queue_name,
    resolve_connection,
    resolve_setting_expressions,
)
from devstack.host_telemetry import start_worker_telemetry
from devstack.host_timer import ScheduleMonitor, TimerListener, timer_configs, utc_now

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7071
SHUTDOWN_GRACE_SECONDS = 10.0
HTTP_TRIGGER = "httpTrigger"
QUEUE_TRIGGER = "queueTrigger"
TIMER_TRIGGER = "timerTrigger"
SUPPORTED_TRIGGERS = (HTTP_TRIGGER, QUEUE_TRIGGER, TIMER_TRIGGER)
STORAGE_THREADS = 32
LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
# Libraries that log every request at INFO: quiet unless asked (--library-log-level). The app
# turns the Azure SDK and httpx down itself in Azure (shared/telemetry.py QUIET_LOGGERS).
NOISY_LOGGERS = ("azure", "httpx", "uvicorn")


def read_local_settings(app_dir: Path, name: str = "local.settings.json") -> dict[str, Any]:
    """The parsed `local.settings.json` (or another file of its shape), or {} when the app has
    none."""
    path = app_dir / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise HostError(f"Cannot read {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise HostError(f"{path.name} is not a JSON object")
    if data.get("IsEncrypted"):
        raise HostError(f"{path.name} is encrypted (IsEncrypted: true); decrypt it first")
    return data


def local_setting_values(local_settings: Mapping[str, Any]) -> dict[str, str]:
    """The `Values` section, which must map names to strings."""
    values = local_settings.get("Values") or {}
    if not isinstance(values, dict):
        raise HostError("local.settings.json Values is not a JSON object")
    for name, value in values.items():
        if not isinstance(value, str):
            raise HostError(f"local.settings.json Values.{name} is not a string")
    return dict(values)


def merge_settings(local_values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """App settings as Core Tools makes them: environment variables win over local Values."""
    merged = dict(local_values)
    merged.update(environ)
    return merged


def apply_settings(
    local_values: Mapping[str, str], environ: MutableMapping[str, str]
) -> dict[str, str]:
    """Put the merged settings into `environ` (the worker sees app settings as env vars)."""
    for name in local_values:
        if name in environ:
            logger.info(
                "Skipping '%s' from local settings as it's already defined in current "
                "environment variables.",
                name,
            )
    merged = merge_settings(local_values, environ)
    for name, value in merged.items():
        environ.setdefault(name, value)
    return merged


def read_host_json(app_dir: Path) -> dict[str, Any]:
    """The app's host.json, which the host requires, at version 2.0."""
    path = app_dir / "host.json"
    if not path.is_file():
        raise HostError(f"No host.json in '{app_dir}': not a Functions app directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise HostError(f"Cannot read host.json: {exc}") from exc
    if not isinstance(data, dict) or str(data.get("version")) != "2.0":
        raise HostError('host.json must be an object with "version": "2.0"')
    return data


HOST_JSON_OVERRIDE_PREFIX = "AzureFunctionsJobHost__"


def with_app_setting_overrides(
    host_json: Mapping[str, Any], settings: Mapping[str, str]
) -> dict[str, Any]:
    """host.json with each `AzureFunctionsJobHost__path__to__option` app setting put over it.

    As the host: it loads host.json as the configuration section `AzureFunctionsJobHost`, and
    the environment variables come after it, `__` standing for the section separator (Azure/
    azure-functions-host ScriptHostBuilderExtensions + ConfigurationSectionNames.JobHost; the
    WebJobs SDK's ConfigureWebJobs adds the environment source last). Keys match regardless
    of case, as .NET configuration keys do; values stay strings, as there.
    """
    merged: dict[str, Any] = json.loads(json.dumps(host_json))
    for name, value in settings.items():
        if not name.lower().startswith(HOST_JSON_OVERRIDE_PREFIX.lower()):
            continue
        *sections, option = name[len(HOST_JSON_OVERRIDE_PREFIX) :].split("__")
        if not option or not all(sections):
            continue
        node = merged
        for section in sections:
            key = next((k for k in node if k.lower() == section.lower()), section)
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        key = next((k for k in node if k.lower() == option.lower()), option)
        node[key] = value
    return merged


def route_prefix(host_json: Mapping[str, Any]) -> str:
    """host.json `extensions.http.routePrefix`, `api` by default (may be empty)."""
    http = (host_json.get("extensions") or {}).get("http") or {}
    prefix = http.get("routePrefix", "api")
    return str(prefix if prefix is not None else "api").strip("/")


def find_function_app(module: ModuleType) -> func.FunctionApp:
    """The one module-level FunctionApp, as the worker requires."""
    apps: dict[int, list[str]] = {}
    found: dict[int, func.FunctionApp] = {}
    for name, value in vars(module).items():
        if isinstance(value, func.FunctionApp):
            apps.setdefault(id(value), []).append(name)
            found[id(value)] = value
    if not found:
        raise HostError(f"{module.__name__}: no module-level azure.functions.FunctionApp instance")
    if len(found) > 1:
        names = ", ".join("/".join(n) for n in apps.values())
        raise HostError(f"{module.__name__}: several FunctionApp instances ({names}); keep one")
    return next(iter(found.values()))


def load_function_app(app_dir: Path) -> func.FunctionApp:
    """Import `function_app` from `app_dir` and return its FunctionApp."""
    sys.path.insert(0, str(app_dir))
    try:
        module = importlib.import_module("function_app")
    except ModuleNotFoundError as exc:
        if exc.name == "function_app":
            raise HostError(f"No function_app.py in '{app_dir}'") from exc
        raise
    except Exception as exc:
        # As the worker reports an app that fails to index: the error, and no function runs.
        raise HostError(f"function_app failed to load: {type(exc).__name__}: {exc}") from exc
    location = Path(module.__file__ or "").resolve().parent
    if location != app_dir.resolve():
        raise HostError(f"Imported function_app from '{location}', not from '{app_dir}'")
    return find_function_app(module)


def check_parameters(name: str, function: Any, bindings: Iterable[Any]) -> None:
    """Refuse what the worker refuses at load: binding names and parameters must agree."""
    params = set(inspect.signature(function).parameters)
    declared = {b.name for b in bindings if b.name != "$return"}
    missing = declared - params
    if missing:
        raise HostError(
            f"Cannot load the {name} function: the following parameters are declared in "
            f"function.json but not in Python: {sorted(missing)}"
        )
    extra = params - declared - {CONTEXT_PARAM}
    if extra:
        raise HostError(
            f"Cannot load the {name} function: the following parameters are declared in "
            f"Python but not in function.json: {sorted(extra)}"
        )


def collect_functions(functions: Iterable[func.Function], app_dir: Path) -> list[FunctionSpec]:
    """Specs of the functions this host can run; the others are skipped with a warning."""
    specs = []
    for function in functions:
        name = function.get_function_name() or function.get_user_function().__name__
        user_function = function.get_user_function()
        trigger = function.get_trigger()
        bindings = function.get_bindings()
        check_parameters(name, user_function, bindings)
        if trigger is None or trigger.type not in SUPPORTED_TRIGGERS:
            kind = trigger.type if trigger is not None else "no trigger"
            logger.warning("%s: %s is not supported by the local host; skipped", name, kind)
            continue
        others = [
            b
            for b in bindings
            if b.name != trigger.name and not (b.type == "http" and b.name == "$return")
        ]
        if others:
            kinds = ", ".join(f"{b.type} '{b.name}'" for b in others)
            logger.warning("%s: binding %s not supported by the local host; skipped", name, kinds)
            continue
        specs.append(FunctionSpec(name, user_function, trigger, str(app_dir)))
    return specs


def thread_count(settings: Mapping[str, str]) -> int:
    """PYTHON_THREADPOOL_THREAD_COUNT, or what the Functions host sets when it is absent."""
    raw = settings.get("PYTHON_THREADPOOL_THREAD_COUNT")
    if not raw:
        return default_thread_count()
    if not raw.isdigit() or int(raw) < 1:
        raise HostError(f"PYTHON_THREADPOOL_THREAD_COUNT must be a positive integer, not '{raw}'")
    return int(raw)


def http_route(spec: FunctionSpec) -> HttpRoute:
    """The route of an HTTP-triggered function, from its trigger binding."""
    trigger = spec.trigger
    return HttpRoute(
        spec=spec,
        template=RouteTemplate(getattr(trigger, "route", None) or spec.name),
        methods=normalize_methods(getattr(trigger, "methods", None)),
        auth_level=normalize_auth_level(getattr(trigger, "auth_level", None)),
        param_name=trigger.name,
    )


class Listener(Protocol):
    """What the host starts and stops besides the HTTP server: a queue or timer listener."""

    spec: FunctionSpec

    async def start(self) -> None:
        """Begin listening."""

    async def stop(self, timeout: float) -> bool:
        """Stop, waiting up to `timeout` s for invocations; True if they all finished."""

    def close(self) -> None:
        """Release the listener's clients."""


class _Server(uvicorn.Server):
    """uvicorn server that leaves SIGINT/SIGTERM to the host."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Do not install uvicorn's handlers (they re-raise the signal after shutdown)."""
        yield


class LocalHost:
    """The local Functions host: settings, app import, HTTP server and queue listeners."""

    def __init__(
        self,
        app_dir: Path | str,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        use_local_settings: bool = True,
    ) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.host = host
        self.port = port
        self.use_local_settings = use_local_settings

    async def serve(self, stop: asyncio.Event | None = None) -> bool:
        """Run until `stop` is set or SIGINT/SIGTERM; True if every invocation finished."""
        stop = stop or asyncio.Event()
        local = read_local_settings(self.app_dir) if self.use_local_settings else {}
        settings = apply_settings(local_setting_values(local), os.environ)
        host_json = with_app_setting_overrides(read_host_json(self.app_dir), settings)
        start_worker_telemetry(settings, os.environ)  # as the worker: before the app's import
        app = load_function_app(self.app_dir)
        try:
            functions = app.get_functions()
        except ValueError as exc:
            raise HostError(str(exc)) from exc
        specs = collect_functions(functions, self.app_dir)
        routes = [http_route(s) for s in specs if s.trigger.type == HTTP_TRIGGER]
        queue_specs = [s for s in specs if s.trigger.type == QUEUE_TRIGGER]
        timer_specs = [s for s in specs if s.trigger.type == TIMER_TRIGGER]
        options = QueueOptions.from_host_json(host_json, os.cpu_count() or 1)
        invoker = Invoker(thread_count(settings))
        io = ThreadPoolExecutor(max_workers=STORAGE_THREADS, thread_name_prefix="storage")
        listeners: list[Listener] = []
        monitor: ScheduleMonitor | None = None
        sock: socket.socket | None = None
        try:
            listeners.extend(self._listener(s, settings, options, invoker, io) for s in queue_specs)
            timers = timer_configs(timer_specs, settings, utc_now())
            if any(config.use_monitor for _, config in timers):
                monitor = self._schedule_monitor(settings)
            listeners.extend(
                TimerListener(s, c, invoker, io, monitor if c.use_monitor else None)
                for s, c in timers
            )
            self._warn_about_keys(routes, settings)
            sock = self._bind()
            self._banner(routes, listeners, route_prefix(host_json))
            http = HttpApp(routes, route_prefix(host_json), invoker, settings)
            return await self._run(http, sock, listeners, invoker, stop)
        finally:
            if sock is not None:
                sock.close()  # uvicorn closes it too; this covers a failed start
            for listener in listeners:
                listener.close()
            if monitor is not None:
                monitor.close()
            invoker.shutdown()
            io.shutdown(wait=False, cancel_futures=True)

    def _listener(
        self,
        spec: FunctionSpec,
        settings: Mapping[str, str],
        options: QueueOptions,
        invoker: Invoker,
        io: ThreadPoolExecutor,
    ) -> QueueListener:
        trigger = spec.trigger
        name = resolve_setting_expressions(getattr(trigger, "queue_name", "") or "", settings)
        queue_name = normalize_queue_name(name)
        connection = resolve_connection(getattr(trigger, "connection", None), settings)
        try:
            queue, poison = create_clients(connection, queue_name)
        except ValueError as exc:
            raise HostError(f"{spec.name}: bad storage connection: {exc}") from exc
        # Local only: tests that kill the host shorten the host's fixed 10-minute hold.
        hold = int(settings.get("LOCAL_QUEUE_HOLD_SECONDS") or MESSAGE_HOLD_SECONDS)
        return QueueListener(spec, queue, poison, options, invoker, io, hold_seconds=hold)

    def _schedule_monitor(self, settings: Mapping[str, str]) -> ScheduleMonitor | None:
        """Where timers with `use_monitor` keep their schedule status, if storage allows."""
        try:
            return ScheduleMonitor.from_settings(settings, str(self.app_dir))
        except HostError as exc:
            logger.warning(
                "Timers with use_monitor keep their schedule status in AzureWebJobsStorage, "
                "which is not usable here (%s): they will not catch up on a missed occurrence",
                exc,
            )
            return None

    @staticmethod
    def _warn_about_keys(routes: Sequence[HttpRoute], settings: Mapping[str, str]) -> None:
        levels = {r.auth_level for r in routes}
        if "function" in levels and not settings.get("LOCAL_FUNCTION_KEY"):
            logger.warning(
                "LOCAL_FUNCTION_KEY is not set: every FUNCTION-level route will answer 401"
            )
        if "admin" in levels and not settings.get("LOCAL_ADMIN_KEY"):
            logger.warning("LOCAL_ADMIN_KEY is not set: every ADMIN-level route will answer 401")

    def _bind(self) -> socket.socket:
        """Bind the listening socket first, so `--port 0` has a known port for the banner."""
        port = DEFAULT_PORT if self.port is None else self.port
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so,
        # and with it on every response body waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, port))
        except OSError as exc:
            sock.close()
            raise HostError(f"Cannot listen on {self.host}:{port}: {exc}") from exc
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    def _banner(
        self, routes: Sequence[HttpRoute], listeners: Sequence[Listener], prefix: str
    ) -> None:
        base = f"http://{self.host}:{self.port}"
        logger.info("Functions:")
        for route in routes:
            methods = ",".join(sorted(route.methods)) if route.methods else "*"
            path = "/".join(p for p in (prefix, route.template.template) if p)
            logger.info("    %s: [%s] %s/%s", route.spec.name, methods, base, path)
        for listener in listeners:
            if isinstance(listener, QueueListener):
                logger.info("    %s: queueTrigger %s", listener.spec.name, listener.queue_name)
            elif isinstance(listener, TimerListener):
                config = listener.config
                notes = [f"from {config.override}"] if config.override else []
                if config.run_on_startup:
                    notes.append("runOnStartup")
                if listener.monitored:
                    notes.append("useMonitor")
                suffix = f" ({', '.join(notes)})" if notes else ""
                logger.info(
                    "    %s: timerTrigger %s%s", listener.spec.name, config.schedule, suffix
                )

    async def _run(
        self,
        http: HttpApp,
        sock: socket.socket,
        listeners: Sequence[Listener],
        invoker: Invoker,
        stop: asyncio.Event,
    ) -> bool:
        config = uvicorn.Config(
            http,
            log_config=None,
            access_log=False,
            lifespan="off",
            interface="asgi3",
            http="h11",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS),
        )
        server = _Server(config)
        server_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if server_task.done():
                await server_task
                raise HostError("The HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        with self._signals(stop):
            for listener in listeners:
                await listener.start()
            logger.info("Listening on http://%s:%d", self.host, self.port)
            logger.info("Host started")
            await stop.wait()
            logger.info("Stopping host")
            server.should_exit = True
            finished = await asyncio.gather(
                *(listener.stop(SHUTDOWN_GRACE_SECONDS) for listener in listeners)
            )
            await server_task
        if not all(finished) or invoker.in_flight:
            logger.warning("Invocations still running at shutdown were abandoned")
            return False
        return True

    @staticmethod
    @contextlib.contextmanager
    def _signals(stop: asyncio.Event) -> Generator[None, None, None]:
        """SIGINT/SIGTERM stop the host gracefully; a second one exits at once."""
        loop = asyncio.get_running_loop()

        def handle() -> None:
            if stop.is_set():
                logger.warning("Second stop signal: exiting without waiting")
                logging.shutdown()
                os._exit(1)
            stop.set()

        installed = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, handle)
                installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


def configure_logging(library_level: str = "WARNING") -> None:
    """Host and function logs to stderr at INFO; the SDKs' request chatter from `library_level`.

    In Azure the app turns the Azure SDK's and httpx's loggers down to WARNING when it loads,
    unless their level was set (shared/telemetry.py); set here first, the level chosen stands,
    so `INFO` shows every storage and SendGrid request, as a test of what the logs would hold.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(library_level)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.host",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--app-dir", default=".", help="function app directory (default: .)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default: local.settings.json Host.LocalHttpPort, else 7071; 0 = any free)",
    )
    parser.add_argument(
        "--environment-only",
        action="store_true",
        help="take settings from the environment alone, not local.settings.json (for tests)",
    )
    parser.add_argument(
        "--library-log-level",
        choices=("DEBUG", "INFO", "WARNING"),
        default="WARNING",
        help="level of the Azure SDK's, httpx's and uvicorn's loggers (default: WARNING, as "
        "the app sets them in Azure; INFO logs each storage and SendGrid request)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the host until SIGINT/SIGTERM; 0 after a graceful stop, 1 if it cannot start."""
    args = parse_args(argv)
    configure_logging(args.library_log_level)
    port = args.port
    if port is None:
        with contextlib.suppress(HostError):
            host_settings = read_local_settings(Path(args.app_dir)).get("Host") or {}
            port = host_settings.get("LocalHttpPort")
    host = LocalHost(
        args.app_dir,
        args.host,
        None if port is None else int(port),
        use_local_settings=not args.environment_only,
    )
    try:
        asyncio.run(host.serve())
    except HostError as exc:
        logger.error("%s", exc)
        return 1
    return 0


def _exit(code: int) -> None:
    """Exit, without waiting for a function thread that outlived the shutdown grace period."""
    deadline = time.monotonic() + 1.0
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.current_thread()
    ):
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
