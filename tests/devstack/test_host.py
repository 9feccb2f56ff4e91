"""Tests of the local Functions host: its pure parts, then a real host process on Azurite."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import IO, Any

import azure.functions as func
import httpx
import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from devstack.host import (
    check_parameters,
    collect_functions,
    find_function_app,
    http_route,
    merge_settings,
    route_prefix,
    with_app_setting_overrides,
)
from devstack.host_http import HttpApp, RouteTemplate, is_authorized, to_response
from devstack.host_invoke import FunctionSpec, HostError, Invoker
from devstack.host_queue import (
    PollingBackoff,
    QueueListener,
    QueueOptions,
    StorageConnection,
    create_clients,
    parse_timespan,
    poison_queue_name,
    resolve_connection,
    resolve_setting_expressions,
)
from shared.settings import Settings, data_connection

REPO = Path(__file__).resolve().parents[2]
SAMPLE_APP = Path(__file__).parent / "sample_app"
AZURITE = REPO / "node_modules" / ".bin" / "azurite"
# The well-known key of the emulator's devstoreaccount1 (public, the same in Azurite and the SDK).
DEVSTORE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
FUNCTION_KEY = "test-function-key"
ADMIN_KEY = "test-admin-key"


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:01:00", 60.0),
        ("00:00:02", 2.0),
        ("00:00:00.1", 0.1),
        ("1.02:03:04", 93784.0),
        ("1:02:03:04", 93784.0),
        ("02:03", 7380.0),
    ],
)
def test_should_parse_timespans_like_dotnet(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


def test_should_read_a_bare_number_as_days_like_timespan_parse() -> None:
    assert parse_timespan(2000) == 2000 * 86400
    assert parse_timespan("24:00:00") == 24 * 86400


@pytest.mark.parametrize("text", ["", "1.5", "00:60:00", "soon", "-00:00:01"])
def test_should_refuse_malformed_timespans(text: str) -> None:
    with pytest.raises(HostError):
        parse_timespan(text)


def test_should_default_queue_options_like_the_storage_extension() -> None:
    options = QueueOptions.from_host_json({"version": "2.0"}, cpu_count=4)

    assert options == QueueOptions(
        batch_size=16,
        new_batch_threshold=32,
        max_polling_interval=60.0,
        visibility_timeout=0.0,
        max_dequeue_count=5,
        message_encoding="base64",
    )


def test_should_read_queue_options_case_insensitively() -> None:
    host_json = {
        "extensions": {
            "queues": {
                "BatchSize": 8,
                "maxPollingInterval": "00:00:02",
                "visibilityTimeout": "00:00:30",
                "messageEncoding": "None",
            }
        }
    }

    options = QueueOptions.from_host_json(host_json, cpu_count=2)

    assert (options.batch_size, options.new_batch_threshold) == (8, 8)
    assert (options.max_polling_interval, options.visibility_timeout) == (2.0, 30.0)
    assert options.message_encoding == "none"


@pytest.mark.parametrize(
    "queues",
    [
        {"batchSize": 33},
        {"batchSize": 0},
        {"maxDequeueCount": 0},
        {"maxPollingInterval": "00:00:00.05"},
        {"messageEncoding": "utf8"},
    ],
)
def test_should_refuse_queue_options_the_host_refuses(queues: dict[str, Any]) -> None:
    with pytest.raises(HostError):
        QueueOptions.from_host_json({"extensions": {"queues": queues}}, cpu_count=1)


def test_should_back_off_polling_by_doubling_and_reset_after_a_message() -> None:
    backoff = PollingBackoff(0.1, 1.0, rng=lambda low, high: 1.0)

    empty = [backoff.next_delay(False) for _ in range(6)]
    after_message = backoff.next_delay(True)

    assert empty == pytest.approx([0.1, 0.2, 0.3, 0.5, 0.9, 1.0])
    assert after_message == pytest.approx(0.1)


def test_should_match_route_template_with_params_case_insensitively() -> None:
    template = RouteTemplate("v1/messages/{id}")

    assert template.match("V1/Messages/abc") == {"id": "abc"}
    assert template.match("v1/messages/abc/") == {"id": "abc"}
    assert template.match("v1/messages") is None
    assert template.match("v1/messages/abc/extra") is None


def test_should_check_int_constraint_and_allow_optional_param() -> None:
    template = RouteTemplate("items/{id:int}/{part?}")

    assert template.match("items/12") == {"id": "12"}
    assert template.match("items/12/body") == {"id": "12", "part": "body"}
    assert template.match("items/twelve") is None
    assert template.match("items/99999999999") is None


def test_should_match_defaults_catch_all_and_complex_segments() -> None:
    assert RouteTemplate("files/{*path}").match("files/a/b.txt") == {"path": "a/b.txt"}
    assert RouteTemplate("page/{n:int=1}").match("page") == {"n": "1"}
    assert RouteTemplate("f/{name}.{ext}").match("f/report.pdf") == {"name": "report", "ext": "pdf"}
    assert RouteTemplate("").match("") == {}


def test_should_rank_literal_segments_before_parameters() -> None:
    literal = RouteTemplate("v1/messages/search")
    constrained = RouteTemplate("v1/messages/{id:int}")
    plain = RouteTemplate("v1/messages/{id}")

    assert literal.precedence < constrained.precedence < plain.precedence


def test_should_refuse_unknown_route_constraint() -> None:
    with pytest.raises(HostError, match="unknown constraint 'colour'"):
        RouteTemplate("things/{id:colour}")


def test_should_check_keys_per_auth_level() -> None:
    assert is_authorized("anonymous", None, None, None)
    assert is_authorized("function", "fk", "fk", None)
    assert is_authorized("function", "ak", "fk", "ak")
    assert not is_authorized("function", "wrong", "fk", "ak")
    assert not is_authorized("function", None, "fk", "ak")
    assert not is_authorized("function", "anything", None, None)
    assert is_authorized("admin", "ak", "fk", "ak")
    assert not is_authorized("admin", "fk", "fk", "ak")
    assert not is_authorized("admin", "fk", "fk", None)


def test_should_keep_repeated_headers_and_charset_of_text_responses() -> None:
    response = func.HttpResponse("hi", status_code=202)
    response.headers.add("X-Tag", "a")
    response.headers.add("X-Tag", "b")

    converted = to_response(response)

    assert converted.status_code == 202
    assert (b"x-tag", b"a") in converted.raw_headers
    assert (b"x-tag", b"b") in converted.raw_headers
    assert (b"content-type", b"text/plain; charset=utf-8") in converted.raw_headers


def test_should_let_environment_override_local_settings() -> None:
    merged = merge_settings({"A": "file", "B": "file"}, {"A": "env", "C": "env"})

    assert merged == {"A": "env", "B": "file", "C": "env"}


def connection_string_of(connection: str | None, settings: dict[str, str]) -> str | None:
    return resolve_connection(connection, settings).connection_string


def test_should_resolve_connection_from_azurewebjobs_prefixed_setting_first() -> None:
    settings = {"AzureWebJobsMain": "first", "Main": "second", "Other": "other"}

    assert connection_string_of("Main", settings) == "first"
    assert connection_string_of("Other", settings) == "other"
    assert connection_string_of(None, {"AzureWebJobsStorage": "s"}) == "s"


def test_should_resolve_a_binding_without_connection_to_azurewebjobsstorage_then_storage() -> None:
    # The WebJobs SDK's default connection name is "Storage" (ConnectionStringNames.Storage).
    assert connection_string_of(None, {"AzureWebJobsStorage": "a", "Storage": "b"}) == "a"
    assert connection_string_of("", {"Storage": "b"}) == "b"


def test_should_resolve_an_identity_based_connection_to_its_service_uris() -> None:
    settings = {
        "Main__queueServiceUri": "https://127.0.0.1:10001/devstoreaccount1",
        "Main__blobServiceUri": "https://127.0.0.1:10000/devstoreaccount1",
        "main__CREDENTIAL": "managedidentity",
        "Main__clientId": "00000000-0000-4000-8000-000000000001",
    }

    connection = resolve_connection("Main", settings)

    assert connection.connection_string is None
    assert connection.section == "Main"
    assert connection.service_uri("queue") == "https://127.0.0.1:10001/devstoreaccount1"
    assert connection.service_uri("blob") == "https://127.0.0.1:10000/devstoreaccount1"
    assert connection.entries["credential"] == "managedidentity"


def test_should_make_service_uris_from_the_account_name_before_anything_else() -> None:
    connection = resolve_connection(
        "Main",
        {"Main__accountName": "stmail", "Main__queueServiceUri": "https://elsewhere.example"},
    )

    assert connection.service_uri("queue") == "https://stmail.queue.core.windows.net"
    assert connection.service_uri("blob") == "https://stmail.blob.core.windows.net"


def test_should_take_service_uri_when_no_service_specific_uri_is_given() -> None:
    connection = resolve_connection("Main", {"Main__serviceUri": "https://q.example"})

    assert connection.service_uri("queue") == "https://q.example"


def test_should_read_only_the_first_section_that_exists_even_without_a_value() -> None:
    # AzureWebJobsMain exists through its entry, so Main's connection string is never read.
    settings = {"AzureWebJobsMain__accountName": "acct", "Main": "UseDevelopmentStorage=true"}

    connection = resolve_connection("Main", settings)

    assert connection.section == "AzureWebJobsMain"
    assert connection.connection_string is None
    assert connection.service_uri("queue") == "https://acct.queue.core.windows.net"


def test_should_refuse_a_section_without_a_queue_service_or_with_an_empty_value() -> None:
    with pytest.raises(HostError, match=r"Main__credential.*gives no queue service"):
        resolve_connection("Main", {"Main__credential": "managedidentity"})
    with pytest.raises(HostError, match="'Main' is empty"):
        resolve_connection("Main", {"Main": ""})


def test_should_refuse_an_identity_entry_that_is_an_unresolved_key_vault_reference() -> None:
    settings = {"Main__queueServiceUri": "@Microsoft.KeyVault(SecretUri=x)"}

    with pytest.raises(HostError, match=r"Main__queueServiceUri.*Key Vault"):
        resolve_connection("Main", settings)


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ({"credential": "clientsecret"}, "not 'clientsecret'"),
        ({"clientSecret": "s", "tenantId": "t", "clientId": "c"}, "client secret"),
        (
            {"credential": "managedidentity", "clientId": "a", "managedIdentityObjectId": "b"},
            "more than one managed identity",
        ),
    ],
)
def test_should_refuse_credentials_the_local_host_cannot_build(
    entries: dict[str, str], problem: str
) -> None:
    settings = {"Main__queueServiceUri": "https://q.example"}
    settings.update({f"Main__{key}": value for key, value in entries.items()})

    with pytest.raises(HostError, match=problem):
        resolve_connection("Main", settings).credential()


@pytest.mark.parametrize(
    "environ",
    [
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true"},
        {"AzureWebJobsStorage": "host", "MAILGATE_STORAGE": "UseDevelopmentStorage=true"},
        {
            "AzureWebJobsStorage": "host",
            "AzureWebJobsMAILGATE_STORAGE": "UseDevelopmentStorage=true",
            "MAILGATE_STORAGE": "not-read",
        },
    ],
    ids=["host storage", "MAILGATE_STORAGE", "AzureWebJobsMAILGATE_STORAGE first"],
)
def test_should_read_the_trigger_connection_where_the_gateway_keeps_its_data(
    environ: dict[str, str],
) -> None:
    settings = {"ALLOWED_SENDERS": "@example.com", "SENDGRID_API_KEY": "SG.x", **environ}

    trigger = connection_string_of(data_connection(settings), settings)

    assert trigger == Settings.from_env(settings).storage.connection_string


def test_should_read_the_same_identity_based_data_connection_as_the_gateway() -> None:
    settings = {
        "ALLOWED_SENDERS": "@example.com",
        "SENDGRID_API_KEY": "SG.x",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "MAILGATE_STORAGE__queueServiceUri": "https://127.0.0.1:10001/devstoreaccount1",
        "MAILGATE_STORAGE__tableServiceUri": "https://127.0.0.1:10002/devstoreaccount1",
        "MAILGATE_STORAGE__blobServiceUri": "https://127.0.0.1:10000/devstoreaccount1",
        "MAILGATE_STORAGE__credential": "managedidentity",
        "MAILGATE_STORAGE__clientId": "00000000-0000-4000-8000-000000000001",
    }

    trigger = resolve_connection(data_connection(settings), settings)

    storage = Settings.from_env(settings).storage
    assert trigger.service_uri("queue") == storage.queue_service_uri
    assert trigger.entries["credential"] == storage.credential
    assert trigger.entries["clientid"] == storage.client_id


def test_should_refuse_missing_connection_and_unresolved_key_vault_reference() -> None:
    with pytest.raises(HostError, match="AzureWebJobsMain"):
        resolve_connection("Main", {})
    with pytest.raises(HostError, match="Key Vault"):
        resolve_connection("Main", {"Main": "@Microsoft.KeyVault(SecretUri=x)"})


def test_should_resolve_percent_settings_and_name_the_missing_one() -> None:
    assert resolve_setting_expressions("%Q%-in", {"Q": "mail"}) == "mail-in"
    with pytest.raises(HostError, match="'MISSING'"):
        resolve_setting_expressions("%MISSING%", {})


def test_should_keep_no_poison_queue_for_poison_queues_or_too_long_names() -> None:
    assert poison_queue_name("mail-outbound") == "mail-outbound-poison"
    assert poison_queue_name("mail-outbound-poison") is None
    assert poison_queue_name("q" * 57) is None


def test_should_read_route_prefix_default_and_empty() -> None:
    assert route_prefix({"version": "2.0"}) == "api"
    assert route_prefix({"extensions": {"http": {"routePrefix": ""}}}) == ""


def test_should_put_azure_functions_job_host_app_settings_over_host_json() -> None:
    host_json: dict[str, Any] = {
        "version": "2.0",
        "extensions": {"queues": {"maxDequeueCount": 5, "batchSize": 8}},
    }
    settings = {
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2",
        "azurefunctionsjobhost__Extensions__Queues__VisibilityTimeout": "00:00:00",
        "AzureFunctionsJobHost__extensions__http__routePrefix": "gateway",
        "AzureFunctionsJobHost__": "ignored",
        "MAIL_QUEUE_NAME": "mail-outbound",
    }

    merged = with_app_setting_overrides(host_json, settings)

    options = QueueOptions.from_host_json(merged, cpu_count=1)
    assert (options.max_dequeue_count, options.visibility_timeout) == (2, 0.0)
    assert options.batch_size == 8
    assert route_prefix(merged) == "gateway"
    assert host_json["extensions"]["queues"]["maxDequeueCount"] == 5


def test_should_refuse_module_without_or_with_several_function_apps() -> None:
    module = ModuleType("function_app")
    with pytest.raises(HostError, match="no module-level"):
        find_function_app(module)
    app = func.FunctionApp()
    vars(module).update(one=app, alias=app)
    assert find_function_app(module) is app
    vars(module)["two"] = func.FunctionApp()
    with pytest.raises(HostError, match="several"):
        find_function_app(module)


def test_should_refuse_binding_that_is_not_a_parameter_as_the_worker_does() -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="message", queue_name="q", connection="C")
    def handler(msg: func.QueueMessage) -> None:
        """Declares `msg`, binds `message`."""

    [function] = app.get_functions()
    with pytest.raises(HostError, match="not in Python"):
        check_parameters("handler", function.get_user_function(), function.get_bindings())


def test_should_serve_routes_at_the_root_when_route_prefix_is_empty() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="ping", methods=["GET"])
    def ping(req: func.HttpRequest) -> func.HttpResponse:
        """Answer pong."""
        return func.HttpResponse("pong")

    routes = [http_route(s) for s in collect_functions(app.get_functions(), Path("."))]
    invoker = Invoker(thread_count=2)
    transport = httpx.ASGITransport(app=HttpApp(routes, "", invoker, {}))

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            return await client.get(path)

    try:
        assert asyncio.run(get("/ping")).text == "pong"
        assert asyncio.run(get("/api/ping")).status_code == 404
    finally:
        invoker.shutdown()


# ---------------------------------------------------------------- processes


class LineReader:
    """Collects a child's output lines in a thread, so a test can wait for one."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        stream.close()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def text(self) -> str:
        """Everything read so far."""
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first line matching `pattern`, waiting for it up to `timeout` seconds."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = 0
        with self._changed:
            while True:
                while index < len(self.lines):
                    found = regex.search(self.lines[index])
                    if found:
                        return found
                    index += 1
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    output = "\n".join(self.lines)
                    raise AssertionError(f"no line matching {pattern!r} in:\n{output}")
                self._changed.wait(remaining)


def stop_process_group(process: subprocess.Popen[str]) -> int:
    """SIGTERM the child's process group, SIGKILL it if it lingers; its exit code."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return process.wait(timeout=5)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `condition` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@dataclass
class Azurite:
    """A running Azurite and its queue endpoint."""

    connection_string: str

    def queue(self, name: str) -> QueueClient:
        """A raw-text client (no base64 policy), like most producers."""
        return QueueClient.from_connection_string(self.connection_string, name)


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite in memory on free ports."""
    args = [str(AZURITE), "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck"]
    for service in ("blob", "queue", "table"):
        args += [f"--{service}Host", "127.0.0.1", f"--{service}Port", "0"]
    process = subprocess.Popen(
        args,
        cwd=tmp_path_factory.mktemp("azurite"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        output = LineReader(process.stdout)
        queue = output.wait_for(
            r"Queue service is successfully listening at http://127\.0\.0\.1:(\d+)"
        )
        blob = output.wait_for(
            r"Blob service is successfully listening at http://127\.0\.0\.1:(\d+)"
        )
        yield Azurite(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={DEVSTORE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{blob.group(1)}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{queue.group(1)}/devstoreaccount1;"
        )
    finally:
        stop_process_group(process)


class HostProcess:
    """`python -m devstack.host` on a free port, with its log."""

    def __init__(self, app_dir: Path, env: dict[str, str], wait: bool = True) -> None:
        base_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devstack.host", "--app-dir", str(app_dir), "--port", "0"],
            cwd=REPO,
            env={**base_env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stderr is not None
        self.log = LineReader(self.process.stderr)
        self.port = 0
        if wait:
            self.port = int(self.log.wait_for(r"Listening on http://127\.0\.0\.1:(\d+)").group(1))
            self.log.wait_for("Host started")

    def url(self, path: str) -> str:
        """Absolute URL of a path on this host."""
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> int:
        """Stop the host; its exit code."""
        return stop_process_group(self.process)


def make_app(root: Path, values: dict[str, str], queues: dict[str, Any] | None = None) -> Path:
    """A copy of the sample app with these local settings and host.json queue options."""
    app_dir = root / "app"
    shutil.copytree(SAMPLE_APP, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    (app_dir / "local.settings.json").write_text(
        json.dumps({"IsEncrypted": False, "Values": values}), encoding="utf-8"
    )
    if queues is not None:
        host_json = json.loads((app_dir / "host.json").read_text(encoding="utf-8"))
        host_json["extensions"]["queues"].update(queues)
        (app_dir / "host.json").write_text(json.dumps(host_json), encoding="utf-8")
    return app_dir


@dataclass
class Sample:
    """The running sample host, the queue its function reads and where calls are recorded."""

    host: HostProcess
    work: QueueClient
    poison: QueueClient
    records: Path

    def calls(self, body: str) -> list[dict[str, Any]]:
        """Calls of the queue function that received `body`."""
        path = self.records / "work.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [entry for entry in map(json.loads, lines) if entry["body"] == body]

    def poisoned(self) -> list[str]:
        """Texts in the poison queue (none before the host creates it)."""
        try:
            return [m.content for m in self.poison.peek_messages(max_messages=32)]
        except ResourceNotFoundError:
            return []


@pytest.fixture(scope="module")
def sample(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sample]:
    """The sample app under the host, settings split between the file and the environment."""
    root = tmp_path_factory.mktemp("sample")
    values = {
        "WORK_QUEUE": "work-items",
        "SampleStorage": azurite.connection_string,
        "LOCAL_FUNCTION_KEY": FUNCTION_KEY,
        "SAMPLE_GREETING": "from-file",
        "SAMPLE_FILE_ONLY": "file-only",
    }
    env = {
        "SAMPLE_GREETING": "from-env",
        "LOCAL_ADMIN_KEY": ADMIN_KEY,
        "SAMPLE_RECORD_DIR": str(root),
    }
    host = HostProcess(make_app(root, values), env)
    try:
        yield Sample(host, azurite.queue("work-items"), azurite.queue("work-items-poison"), root)
    finally:
        host.stop()


def b64(data: bytes) -> str:
    """Standard base64 text, as TextBase64EncodePolicy sends."""
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------- HTTP


def test_should_pass_route_params_query_and_headers_to_anonymous_route(sample: Sample) -> None:
    response = httpx.get(
        sample.host.url("/api/v1/messages/m-42?a=1&a=2&b=x"), headers={"X-Test": "yes"}
    )

    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "GET"
    assert seen["route_params"] == {"id": "m-42"}
    assert seen["params"] == {"a": "1,2", "b": "x"}
    assert seen["x_test"] == "yes"
    assert seen["url"].endswith("/api/v1/messages/m-42?a=1&a=2&b=x")


def test_should_set_client_ip_to_the_peer_as_the_front_end_does_whatever_the_caller_sent(
    sample: Sample,
) -> None:
    response = httpx.get(
        sample.host.url("/api/v1/messages/m-1"), headers={"client-ip": "203.0.113.9:1234"}
    )

    assert response.status_code == 200
    address, _, port = response.json()["client_ip"].rpartition(":")
    assert address == "127.0.0.1"
    assert port.isdigit()


def test_should_answer_404_when_only_the_method_does_not_match_as_the_host_routes(
    sample: Sample,
) -> None:
    # The host's methods are a route constraint: an unlisted method matches no route at all.
    put = httpx.put(sample.host.url("/api/v1/messages/m-1"))
    # GET does not imply HEAD there.
    head = httpx.head(sample.host.url("/api/v1/messages/m-1"))

    assert (put.status_code, "allow" in put.headers) == (404, False)
    assert head.status_code == 404
    assert httpx.request("get", sample.host.url("/api/v1/messages/m-1")).status_code == 200


def test_should_answer_404_for_unknown_paths_and_failed_constraints(sample: Sample) -> None:
    assert httpx.get(sample.host.url("/api/nothing-here")).status_code == 404
    assert httpx.get(sample.host.url("/v1/messages/m-1")).status_code == 404
    assert httpx.get(sample.host.url("/api/v1/items/twelve")).status_code == 404
    assert httpx.get(sample.host.url("/api/v1/items/12/head")).json() == {
        "id": "12",
        "part": "head",
    }


def test_should_answer_401_with_empty_body_without_or_with_wrong_function_key(
    sample: Sample,
) -> None:
    missing = httpx.post(sample.host.url("/api/v1/messages"), content=b"hi")
    wrong = httpx.post(
        sample.host.url("/api/v1/messages"), content=b"hi", headers={"x-functions-key": "nope"}
    )

    assert (missing.status_code, missing.content) == (401, b"")
    assert (wrong.status_code, wrong.content) == (401, b"")


def test_should_accept_function_key_in_header_code_param_or_admin_key(sample: Sample) -> None:
    url = sample.host.url("/api/v1/messages")
    by_header = httpx.post(url, content=b"one", headers={"x-functions-key": FUNCTION_KEY})
    by_code = httpx.post(url, params={"code": FUNCTION_KEY}, content=b"two")
    by_admin = httpx.post(url, params={"code": ADMIN_KEY}, content=b"three")

    assert (by_header.status_code, by_header.text) == (201, "one")
    assert (by_code.status_code, by_code.text) == (201, "two")
    assert (by_admin.status_code, by_admin.text) == (201, "three")
    assert by_header.headers.get_list("x-tag") == ["one", "two"]
    assert by_header.headers["content-type"] == "text/plain; charset=utf-8"


def test_should_require_the_admin_key_for_admin_routes(sample: Sample) -> None:
    url = sample.host.url("/api/admin-op")

    assert httpx.post(url, headers={"x-functions-key": FUNCTION_KEY}).status_code == 401
    assert httpx.post(url, headers={"x-functions-key": ADMIN_KEY}).text == "admin ok"


def test_should_await_async_function_returning_a_string(sample: Sample) -> None:
    response = httpx.get(sample.host.url("/api/async/bob"))

    assert (response.status_code, response.text) == (200, "hello bob")


def test_should_answer_500_and_log_traceback_when_function_raises(sample: Sample) -> None:
    response = httpx.get(sample.host.url("/api/boom"))

    assert response.status_code == 500
    sample.host.log.wait_for(r"Executed 'Functions\.boom' \(Failed, Id=.*, Duration=\d+ms\)")
    sample.host.log.wait_for(r"RuntimeError: boom")


def test_should_refuse_requests_above_100_mb_with_413(sample: Sample) -> None:
    with socket.create_connection(("127.0.0.1", sample.host.port), timeout=5) as connection:
        connection.sendall(
            b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: 104857601\r\n\r\n"
        )
        status_line = connection.recv(1024).split(b"\r\n")[0]

    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"


def test_should_give_environment_variables_precedence_over_local_settings(sample: Sample) -> None:
    def setting(name: str) -> Any:
        return httpx.get(sample.host.url(f"/api/settings/{name}")).json()["value"]

    assert setting("SAMPLE_GREETING") == "from-env"
    assert setting("SAMPLE_FILE_ONLY") == "file-only"
    # Function logs reach the host's log at INFO, and `context` is passed.
    sample.host.log.wait_for(r"Reading setting SAMPLE_FILE_ONLY in read_setting")


def test_should_list_functions_and_skip_unsupported_trigger_with_warning(sample: Sample) -> None:
    log = sample.host.log

    log.wait_for(r"on_blob: blobTrigger is not supported by the local host")
    log.wait_for(r"get_message: \[DELETE,GET\] http://127\.0\.0\.1:\d+/api/v1/messages/\{id\}")
    log.wait_for(r"on_work: queueTrigger work-items")
    # The schedule as the host prints it: NCrontab's expansion of `0 */5 * * * *`.
    log.wait_for(r"tick: timerTrigger Cron: '0 0,5,10,15,20,25,30,35,40,45,50,55 \* \* \* \*'$")
    log.wait_for(r"at_startup: timerTrigger Cron: '0 0 0 1 1 \*' \(runOnStartup\)$")
    # use_monitor needs AzureWebJobsStorage, which the sample's settings leave out.
    log.wait_for(r"Timers with use_monitor keep their schedule status in AzureWebJobsStorage")


# ---------------------------------------------------------------- queues


def test_should_call_queue_function_with_decoded_body_then_delete_message(sample: Sample) -> None:
    body = f"hello {uuid.uuid4()}"
    sample.work.send_message(b64(body.encode()))

    wait_until(lambda: len(sample.calls(body)) == 1)
    wait_until(lambda: sample.work.get_queue_properties().approximate_message_count == 0)

    [call] = sample.calls(body)
    assert call["dequeue_count"] == 1
    sample.host.log.wait_for(r"Executed 'Functions\.on_work' \(Succeeded, Id=")


def test_should_retry_failing_message_up_to_max_dequeue_count_then_copy_to_poison(
    sample: Sample,
) -> None:
    body = f"fail {uuid.uuid4()}"
    sent = b64(body.encode())
    sample.work.send_message(sent)

    wait_until(lambda: sent in sample.poisoned())

    assert [c["dequeue_count"] for c in sample.calls(body)] == [1, 2, 3]
    assert sample.work.get_queue_properties().approximate_message_count == 0
    sample.host.log.wait_for(
        r"Message has reached MaxDequeueCount of 3\. Moving message to queue 'work-items-poison'"
    )


def test_should_release_the_message_of_a_crashed_worker_after_visibility_timeout(
    sample: Sample,
) -> None:
    # sys.exit() in a function ends the worker process in Azure; the host survives, fails the
    # invocation and releases the message after visibilityTimeout (00:00:00 in the sample's
    # host.json), not after the 10-minute hold that only an instance's death leaves.
    body = f"exit {uuid.uuid4()}"
    sample.work.send_message(b64(body.encode()))

    wait_until(lambda: len(sample.calls(body)) == 2, timeout=10)

    assert [c["dequeue_count"] for c in sample.calls(body)] == [1, 2]
    sample.host.log.wait_for(r"Language worker process exited during Functions\.on_work")
    assert sample.host.process.poll() is None
    assert httpx.get(sample.host.url("/api/async/still-up")).text == "hello still-up"


def test_should_move_undecodable_message_to_poison_without_calling_function(
    sample: Sample,
) -> None:
    raw = f'{{"not": "base64", "id": "{uuid.uuid4()}"}}'
    sample.work.send_message(raw)

    wait_until(lambda: raw in sample.poisoned())

    assert sample.calls(raw) == []
    assert sample.work.get_queue_properties().approximate_message_count == 0


def test_should_fail_binding_of_invalid_utf8_without_calling_function_then_poison(
    sample: Sample,
) -> None:
    sent = b64(b"\xff\xfe" + uuid.uuid4().bytes)
    sample.work.send_message(sent)

    wait_until(lambda: sent in sample.poisoned())

    sample.host.log.wait_for(r"Exception binding parameter 'msg': the message body is not valid")
    records = sample.records / "work.jsonl"
    assert not records.exists() or "\ufffd" not in records.read_text(encoding="utf-8")


def test_should_pass_raw_text_with_message_encoding_none_and_poison_over_dequeued_at_once(
    azurite: Azurite, tmp_path: Path
) -> None:
    queue = azurite.queue("raw-items")
    queue.create_queue()
    queue.send_message("stale")
    for _ in range(4):
        # Each receive counts a dequeue; releasing at once makes the next one immediate.
        stale = queue.receive_message(visibility_timeout=30)
        assert stale is not None
        queue.update_message(stale, visibility_timeout=0)
    values = {"WORK_QUEUE": "raw-items", "SampleStorage": azurite.connection_string}
    host = HostProcess(
        make_app(tmp_path, values, {"messageEncoding": "none"}),
        {"SAMPLE_RECORD_DIR": str(tmp_path)},
    )
    try:
        raw = '{"plain": "json"}'
        queue.send_message(raw)
        sample = Sample(host, queue, azurite.queue("raw-items-poison"), tmp_path)

        wait_until(lambda: len(sample.calls(raw)) == 1)
        wait_until(lambda: "stale" in sample.poisoned())

        assert sample.calls("stale") == []
    finally:
        assert host.stop() == 0


def test_should_keep_a_long_running_message_invisible_and_delete_it_after(
    azurite: Azurite,
) -> None:
    calls: list[int | None] = []
    done = threading.Event()

    def slow(msg: func.QueueMessage) -> None:
        calls.append(msg.dequeue_count)
        time.sleep(2.5)
        done.set()

    spec = FunctionSpec("slow", slow, SimpleNamespace(name="msg", type="queueTrigger"), ".")
    options = QueueOptions(batch_size=1, new_batch_threshold=4, max_polling_interval=0.2)
    queue, poison = create_clients(
        StorageConnection("AzureWebJobsStorage", azurite.connection_string), "renew-items"
    )
    invoker = Invoker(thread_count=2)
    io = ThreadPoolExecutor(max_workers=4)
    # Held 1 s and renewed every 0.5 s: without renewal the message would come back
    # during the call, and a delete with the first pop receipt would fail.
    listener = QueueListener(spec, queue, poison, options, invoker, io, hold_seconds=1)

    async def scenario() -> bool:
        await listener.start()
        await asyncio.to_thread(queue.send_message, b64(b"long job"))
        # Keep polling through the call and a little after, so a redelivery would show.
        await asyncio.to_thread(done.wait, 10)
        await asyncio.sleep(0.5)
        return await listener.stop(timeout=10)

    try:
        finished = asyncio.run(scenario())
    finally:
        listener.close()
        invoker.shutdown()
        io.shutdown()

    assert finished
    assert calls == [1]
    assert azurite.queue("renew-items").get_queue_properties().approximate_message_count == 0


# ---------------------------------------------------------------- start and stop


def test_should_finish_in_flight_request_and_exit_zero_on_sigterm(
    azurite: Azurite, tmp_path: Path
) -> None:
    values = {"WORK_QUEUE": "idle-items", "SampleStorage": azurite.connection_string}
    host = HostProcess(make_app(tmp_path, values), {"SAMPLE_RECORD_DIR": str(tmp_path)})
    result: dict[str, httpx.Response] = {}
    request = threading.Thread(
        target=lambda: result.update(slow=httpx.get(host.url("/api/slow"), timeout=10))
    )
    request.start()
    host.log.wait_for(r"Executing 'Functions\.slow'")

    code = host.stop()
    request.join(timeout=10)

    assert code == 0
    assert result["slow"].text == "slow done"
    host.log.wait_for("Stopping host")


def test_should_exit_with_error_naming_a_missing_queue_name_setting(
    azurite: Azurite, tmp_path: Path
) -> None:
    values = {"SampleStorage": azurite.connection_string}
    host = HostProcess(make_app(tmp_path, values), {}, wait=False)

    code = host.process.wait(timeout=20)

    assert code == 1
    host.log.wait_for(r"the app setting 'WORK_QUEUE' is not set")


# ---------------------------------------------------------------- timers


def timer_calls(records: Path, function: str) -> list[dict[str, Any]]:
    """The recorded calls of one timer function of the sample app, in order."""
    path = records / "timers.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [entry for entry in map(json.loads, lines) if entry["function"] == function]


def test_should_run_timers_on_schedule_at_startup_and_past_due_then_stop_between_calls(
    azurite: Azurite, tmp_path: Path
) -> None:
    # The sample's hourly timer last ran two hours ago: the occurrence an hour ago was missed.
    this_hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    missed = this_hour - timedelta(hours=1)
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string
    ).get_container_client("azure-webjobs-hosts")
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    status_blob = "timers/sample-host/Host.Functions.hourly/status"
    before = (missed - timedelta(hours=1)).isoformat()
    container.upload_blob(
        status_blob,
        json.dumps({"Last": before, "Next": missed.isoformat(), "LastUpdated": before}),
        overwrite=True,
    )
    values = {
        "WORK_QUEUE": "timer-items",
        "SampleStorage": azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "AzureFunctionsWebHost__hostid": "sample-host",
        # Every second instead of every five minutes; each call takes 1.5 s.
        "LOCAL_TIMER_SCHEDULE_tick": "* * * * * *",
    }
    env = {"SAMPLE_RECORD_DIR": str(tmp_path), "SAMPLE_TICK_SECONDS": "1.5"}
    host = HostProcess(make_app(tmp_path, values), env)
    try:
        host.log.wait_for(
            r"tick: timerTrigger Cron: '\* \* \* \* \* \*' \(from LOCAL_TIMER_SCHEDULE_tick\)"
        )
        host.log.wait_for(r"The next 5 occurrences of the 'tick' schedule \(Cron: '\* \* \*")
        host.log.wait_for(r"hourly: timerTrigger Cron: '0 0 \* \* \* \*' \(useMonitor\)")
        wait_until(lambda: len(timer_calls(tmp_path, "tick")) >= 3)
        wait_until(lambda: len(timer_calls(tmp_path, "hourly")) == 1)
    finally:
        # Stopped while a tick is running: it finishes, and no other starts.
        code = host.stop()

    assert code == 0
    ticks = timer_calls(tmp_path, "tick")
    for before_call, after_call in itertools.pairwise(ticks):
        assert after_call["started"] >= before_call["ended"]
        # Each call outlasts the next occurrence: the next call follows at once, and only one.
        assert after_call["started"] - before_call["ended"] < 0.5
    assert not any(call["past_due"] for call in ticks)
    log = host.log.text
    assert log.count("Executing 'Functions.tick'") == len(ticks)
    assert log.count("Executed 'Functions.tick' (Succeeded") == len(ticks)
    assert "Executing 'Functions.tick'" not in log.split("Stopping host")[1]
    [startup] = timer_calls(tmp_path, "at_startup")
    assert startup["past_due"] is False
    [hourly] = timer_calls(tmp_path, "hourly")
    assert hourly["past_due"] is True
    assert hourly["schedule_status"]["Next"] == missed.isoformat()
    assert "UnscheduledInvocationReason: IsPastDue" in log
    recorded = json.loads(container.download_blob(status_blob).readall())
    assert datetime.fromisoformat(recorded["Next"]) > this_hour


def test_should_exit_with_error_naming_a_timer_with_an_invalid_schedule(
    azurite: Azurite, tmp_path: Path
) -> None:
    values = {
        "WORK_QUEUE": "bad-timer-items",
        "SampleStorage": azurite.connection_string,
        "LOCAL_TIMER_SCHEDULE_tick": "*/5 * * * *",
    }
    host = HostProcess(make_app(tmp_path, values), {}, wait=False)

    code = host.process.wait(timeout=20)

    assert code == 1
    host.log.wait_for(r"tick: invalid timer schedule \(from LOCAL_TIMER_SCHEDULE_tick\)")
