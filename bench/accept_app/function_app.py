"""Bench-only app: the gateway's own HTTP functions without its queue trigger.

The accept-path scenario runs this so that the host's CPU is the submit path's alone: with the
full app, the queue trigger would deliver the accepted messages in the same process meanwhile.
The functions are the real ones (`functions.messages`, `functions.health`); never deployed.
"""

import azure.functions as func

from functions import health, messages

app = func.FunctionApp()
app.register_functions(messages.bp)
app.register_functions(health.bp)
