"""Bench-only app: a no-op HTTP function and a no-op queue function, to show the host's own cost.

Run by `make bench` with the same local host as the gateway
(`python -m devstack.host --app-dir bench/noop_app --port 0`); never deployed.
"""

import azure.functions as func

app = func.FunctionApp()


@app.function_name("noop_http")
@app.route(route="noop", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def noop_http(req: func.HttpRequest) -> func.HttpResponse:
    """Read the body and answer 202, as the gateway does, without doing anything with it."""
    req.get_body()
    return func.HttpResponse('{"status": "queued"}', status_code=202, mimetype="application/json")


@app.function_name("noop_queue")
@app.queue_trigger(arg_name="msg", queue_name="%NOOP_QUEUE_NAME%", connection="AzureWebJobsStorage")
def noop_queue(msg: func.QueueMessage) -> None:
    """Read the message and succeed, so the host deletes it."""
    msg.get_body()
