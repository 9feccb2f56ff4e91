"""The Functions app: one FunctionApp with the gateway's blueprints registered."""

import azure.functions as func

from functions import dead_letters, delivery, health, messages, sendgrid_compat

app = func.FunctionApp()
app.register_functions(messages.bp)
app.register_functions(sendgrid_compat.bp)
app.register_functions(health.bp)
app.register_functions(delivery.bp)
app.register_functions(dead_letters.bp)
