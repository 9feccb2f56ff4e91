from __future__ import annotations

import ast
import importlib
import inspect
import os
from pathlib import Path
from types import ModuleType

import azure.functions as func
import pytest
from azure.functions.decorators.core import Binding
from azure.functions.decorators.function_app import Function
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.queue import QueueTrigger
from azure.functions.decorators.timer import TimerTrigger

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def function_app() -> ModuleType:
    # A fresh import: get_functions() may be called only once per FunctionApp.
    return importlib.reload(importlib.import_module("function_app"))


@pytest.fixture(scope="module")
def functions_by_name(function_app: ModuleType) -> dict[str, Function]:
    app = function_app.app
    assert isinstance(app, func.FunctionApp)
    return {str(f.get_function_name()): f for f in app.get_functions()}


def trigger_of(function: Function) -> Binding:
    trigger = function.get_trigger()
    assert trigger is not None
    return trigger


def test_should_define_exactly_one_function_app(function_app: ModuleType) -> None:
    apps = [v for v in vars(function_app).values() if isinstance(v, func.FunctionApp)]

    assert len(apps) == 1


def test_should_register_exactly_the_gateway_functions(
    functions_by_name: dict[str, Function],
) -> None:
    assert sorted(functions_by_name) == [
        "console",
        "console_message",
        "console_message_signed_in",
        "console_summary",
        "console_summary_signed_in",
        "deliver_message",
        "expire_data",
        "get_client",
        "get_message_status",
        "health",
        "health_details",
        "health_details_signed_in",
        "list_dead_letters",
        "list_dead_letters_signed_in",
        "monitor_queues",
        "openapi",
        "purge_dead_letters",
        "purge_dead_letters_signed_in",
        "replay_dead_letters",
        "replay_dead_letters_signed_in",
        "sendgrid_events",
        "sendgrid_mail_send",
        "submit_message",
    ]


@pytest.mark.parametrize(
    ("name", "route", "method", "auth_level"),
    [
        ("submit_message", "v1/messages", "POST", func.AuthLevel.ANONYMOUS),
        # With the host's routePrefix "api": POST /api/v3/mail/send, where SendGrid's libraries
        # post once their host is https://<app>/api.
        ("sendgrid_mail_send", "v3/mail/send", "POST", func.AuthLevel.ANONYMOUS),
        ("get_message_status", "v1/messages/{id}", "GET", func.AuthLevel.ANONYMOUS),
        ("get_client", "v1/client", "GET", func.AuthLevel.ANONYMOUS),
        ("health", "health", "GET", func.AuthLevel.ANONYMOUS),
        ("health_details", "health/details", "GET", func.AuthLevel.ADMIN),
        ("openapi", "openapi.json", "GET", func.AuthLevel.ANONYMOUS),
        ("list_dead_letters", "v1/dead-letters", "GET", func.AuthLevel.ADMIN),
        ("replay_dead_letters", "v1/dead-letters/replay", "POST", func.AuthLevel.ADMIN),
        ("purge_dead_letters", "v1/dead-letters/purge", "POST", func.AuthLevel.ADMIN),
        # Static and keyless: it asks for the admin key itself (functions/console.py).
        ("console", "console", "GET", func.AuthLevel.ANONYMOUS),
        ("console_summary", "v1/console/summary", "GET", func.AuthLevel.ADMIN),
        ("console_message", "v1/console/messages/{id}", "GET", func.AuthLevel.ADMIN),
        # The twins for an operator signed in with Entra ID: the sign-in is checked in code.
        (
            "console_summary_signed_in",
            "signed-in/v1/console/summary",
            "GET",
            func.AuthLevel.ANONYMOUS,
        ),
        (
            "replay_dead_letters_signed_in",
            "signed-in/v1/dead-letters/replay",
            "POST",
            func.AuthLevel.ANONYMOUS,
        ),
    ],
)
def test_should_route_each_http_function(
    name: str,
    route: str,
    method: str,
    auth_level: func.AuthLevel,
    functions_by_name: dict[str, Function],
) -> None:
    trigger = trigger_of(functions_by_name[name])

    assert trigger.type == "httpTrigger"
    assert isinstance(trigger, HttpTrigger)
    assert trigger.route == route
    assert [str(m.value) for m in trigger.methods or []] == [method]
    assert trigger.auth_level == auth_level


def test_should_trigger_delivery_from_the_configured_mail_queue(
    functions_by_name: dict[str, Function],
) -> None:
    trigger = trigger_of(functions_by_name["deliver_message"])

    assert trigger.type == "queueTrigger"
    assert isinstance(trigger, QueueTrigger)
    assert trigger.queue_name == "%MAIL_QUEUE_NAME%"
    assert trigger.connection == "AzureWebJobsStorage"


@pytest.mark.parametrize(
    ("environ", "connection"),
    [
        ({}, "AzureWebJobsStorage"),
        ({"MAILGATE_STORAGE": "UseDevelopmentStorage=true"}, "MAILGATE_STORAGE"),
        ({"MAILGATE_STORAGE__accountName": "stdata"}, "MAILGATE_STORAGE"),
    ],
)
def test_should_bind_the_delivery_trigger_to_the_connection_of_the_gateways_data(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], connection: str
) -> None:
    # The host resolves a named connection without falling back to AzureWebJobsStorage, so the
    # binding names AzureWebJobsStorage itself until MAILGATE_STORAGE is configured.
    for name in [n for n in os.environ if n.upper().startswith("MAILGATE_STORAGE")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    delivery = importlib.import_module("functions.delivery")
    try:
        app = func.FunctionApp()
        app.register_functions(importlib.reload(delivery).bp)
        [function] = app.get_functions()
        trigger = trigger_of(function)

        assert isinstance(trigger, QueueTrigger)
        assert trigger.connection == connection
    finally:
        monkeypatch.undo()
        importlib.reload(delivery)


def test_should_monitor_the_queues_every_five_minutes_without_catching_up(
    functions_by_name: dict[str, Function],
) -> None:
    trigger = trigger_of(functions_by_name["monitor_queues"])

    assert trigger.type == "timerTrigger"
    assert isinstance(trigger, TimerTrigger)
    # NCRONTAB, seconds first: second 0 of every fifth minute.
    assert trigger.schedule == "0 */5 * * * *"
    assert (trigger.run_on_startup, trigger.use_monitor) == (False, False)


def test_should_expire_data_on_the_schedule_setting_catching_up_after_downtime(
    functions_by_name: dict[str, Function],
) -> None:
    trigger = trigger_of(functions_by_name["expire_data"])

    assert trigger.type == "timerTrigger"
    assert isinstance(trigger, TimerTrigger)
    # Resolved by the host from the app setting, which infra/ and the local example set.
    assert trigger.schedule == "%RETENTION_SCHEDULE%"
    assert (trigger.run_on_startup, trigger.use_monitor) == (False, True)


@pytest.mark.parametrize(
    "name",
    [
        "submit_message",
        "sendgrid_mail_send",
        "get_message_status",
        "get_client",
        "health",
        "health_details",
        "deliver_message",
        "list_dead_letters",
        "replay_dead_letters",
        "purge_dead_letters",
        "monitor_queues",
        "expire_data",
        "console",
        "console_summary",
        "console_message",
    ],
)
def test_should_name_each_binding_after_a_parameter_of_its_function(
    name: str, functions_by_name: dict[str, Function]
) -> None:
    # The real worker refuses to load a function whose arg_name is not a parameter.
    function = functions_by_name[name]
    parameters = set(inspect.signature(function.get_user_function()).parameters)

    names = {b.name for b in function.get_bindings() if b.name != "$return"}

    assert names
    assert names <= parameters


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


SHARED_MODULES = sorted((ROOT / "shared").rglob("*.py"))


@pytest.mark.parametrize(
    "path", SHARED_MODULES, ids=lambda p: p.relative_to(ROOT / "shared").as_posix()
)
def test_should_keep_azure_functions_and_devstack_out_of_shared(path: Path) -> None:
    # shared/ is deployed and used without a Functions host; devstack/ is never deployed.
    offending = {
        m
        for m in imported_modules(path)
        if m.split(".")[0] == "devstack"
        or m == "azure.functions"
        or m.startswith("azure.functions.")
    }

    assert offending == set()


def test_should_find_the_shared_modules() -> None:
    names = {p.relative_to(ROOT / "shared").as_posix() for p in SHARED_MODULES}

    assert {"gateway.py", "models.py", "settings.py", "sendgrid_v3/schema.py"} <= names
