"""The Functions app: one FunctionApp with the gateway's blueprints registered."""

import os

import azure.functions as func

from functions import (
    console,
    dead_letters,
    delivery,
    health,
    messages,
    monitor,
    openapi,
    sendgrid_compat,
    sendgrid_events,
)
from shared.settings import refuse_unresolved_key_vault_references
from shared.telemetry import configure_telemetry

# A secret App Service could not resolve stops the app here, at start, naming the setting:
# the host logs the error and runs no function rather than one on a reference's text.
refuse_unresolved_key_vault_references(os.environ)
# The Python worker exports traces, metrics and logs (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY);
# this only quiets the libraries' request logging and logs settings that cannot export.
configure_telemetry(os.environ)

app = func.FunctionApp()
app.register_functions(messages.bp)
app.register_functions(sendgrid_compat.bp)
app.register_functions(sendgrid_events.bp)
app.register_functions(health.bp)
app.register_functions(delivery.bp)
app.register_functions(dead_letters.bp)
app.register_functions(openapi.bp)
app.register_functions(monitor.bp)
app.register_functions(console.bp)
