"""Sample app for the local host's tests: each function shows what it received."""

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import azure.functions as func

logger = logging.getLogger(__name__)
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _record(kind: str, entry: dict[str, Any]) -> None:
    """Append one JSON line to <SAMPLE_RECORD_DIR>/<kind>.jsonl for the test to read."""
    path = Path(os.environ["SAMPLE_RECORD_DIR"]) / f"{kind}.jsonl"
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(entry) + "\n")


def _json(value: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(value), status_code=status, mimetype="application/json")


@app.route(route="v1/messages/{id}", methods=["GET", "DELETE"])
def get_message(req: func.HttpRequest) -> func.HttpResponse:
    """Echo the request as the function sees it."""
    return _json(
        {
            "method": req.method,
            "url": req.url,
            "route_params": dict(req.route_params),
            "params": dict(req.params),
            "x_test": req.headers.get("x-test"),
            "client_ip": req.headers.get("client-ip"),
        }
    )


@app.route(route="v1/items/{id:int}/{part?}", methods=["GET"])
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    """Route with an int constraint and an optional parameter."""
    return _json(dict(req.route_params))


@app.route(route="v1/messages", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def post_message(req: func.HttpRequest) -> func.HttpResponse:
    """Keyed route: echo the body with a 201 and a repeated header."""
    response = func.HttpResponse(req.get_body(), status_code=201, mimetype="text/plain")
    response.headers.add("X-Tag", "one")
    response.headers.add("X-Tag", "two")
    return response


@app.route(route="admin-op", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def admin_op(req: func.HttpRequest) -> func.HttpResponse:
    """Admin-level route."""
    return func.HttpResponse("admin ok")


@app.route(route="boom")
def boom(req: func.HttpRequest) -> func.HttpResponse:
    """Always fails."""
    raise RuntimeError("boom")


@app.route(route="async/{name}")
async def async_hello(req: func.HttpRequest) -> str:
    """Async function returning a plain string."""
    await asyncio.sleep(0)
    return f"hello {req.route_params['name']}"


@app.route(route="slow")
def slow(req: func.HttpRequest) -> func.HttpResponse:
    """Takes a second, to test a graceful shutdown."""
    time.sleep(1.0)
    return func.HttpResponse("slow done")


@app.route(route="settings/{name}")
def read_setting(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Show an app setting as the function sees it (an environment variable)."""
    logger.info("Reading setting %s in %s", req.route_params["name"], context.function_name)
    return _json({"value": os.environ.get(req.route_params["name"])})


@app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="SampleStorage")
def on_work(msg: func.QueueMessage) -> None:
    """Record each message; fail those whose body starts with 'fail'; 'exit' exits once."""
    # Lenient decoding, so a call with a non-UTF-8 body would show in the record.
    body = msg.get_body().decode("utf-8", errors="replace")
    _record("work", {"id": msg.id, "body": body, "dequeue_count": msg.dequeue_count})
    if body.startswith("fail"):
        raise ValueError(f"refusing {body}")
    if body.startswith("exit") and msg.dequeue_count == 1:
        # In Azure this ends the Python worker process (a worker crash), not the host.
        sys.exit(3)


def _record_timer(name: str, timer: func.TimerRequest, seconds: float = 0.0) -> None:
    started = time.time()
    time.sleep(seconds)
    _record(
        "timers",
        {
            "function": name,
            "past_due": timer.past_due,
            "schedule_status": getattr(timer, "schedule_status", None),
            "started": started,
            "ended": time.time(),
        },
    )


@app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *")
def tick(timer: func.TimerRequest) -> None:
    """Every five minutes (tests override it); takes SAMPLE_TICK_SECONDS."""
    _record_timer("tick", timer, float(os.environ.get("SAMPLE_TICK_SECONDS") or 0))


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=True)
def at_startup(timer: func.TimerRequest) -> None:
    """Once a year, and whenever the host starts."""
    _record_timer("at_startup", timer)


@app.timer_trigger(arg_name="timer", schedule="0 0 * * * *", use_monitor=True)
def hourly(timer: func.TimerRequest) -> None:
    """Every hour, with the schedule status kept: past due after a missed hour."""
    _record_timer("hourly", timer)


@app.blob_trigger(arg_name="blob", path="samples/{name}", connection="SampleStorage")
def on_blob(blob: func.InputStream) -> None:
    """Not supported by the local host: must be skipped with a warning."""
