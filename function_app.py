"""The Functions app: one FunctionApp with the gateway's blueprints registered."""

import os

import azure.functions as func

from functions import (
    client,
    console,
    dead_letters,
    delivery,
    health,
    messages,
    monitor,
    openapi,
    retention,
    sendgrid_compat,
    sendgrid_events,
)
from shared.telemetry import configure_telemetry

# Nothing here may raise on a setting: were the import to fail, the Python worker would report
# that indexing failed and the host would run on with no function at all, every route a 404
# and the queue monitor silent. Settings are read on first use instead (shared.gateway), and
# while one is wrong every function answers for itself: 503 naming it, mail kept for later.
# The Python worker exports traces, metrics and logs (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY);
# this only quiets the libraries' request logging and logs settings that cannot export.
configure_telemetry(os.environ)

app = func.FunctionApp()
app.register_functions(messages.bp)
app.register_functions(client.bp)
app.register_functions(sendgrid_compat.bp)
app.register_functions(sendgrid_events.bp)
app.register_functions(health.bp)
app.register_functions(delivery.bp)
app.register_functions(dead_letters.bp)
app.register_functions(openapi.bp)
app.register_functions(monitor.bp)
app.register_functions(console.bp)
app.register_functions(retention.bp)
