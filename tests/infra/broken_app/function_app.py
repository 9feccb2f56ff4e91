"""An app the Python worker refuses to load: a binding names a parameter the function lacks.

`app.get_functions()` accepts it; the worker's indexer (and so the host) does not.
"""

import azure.functions as func

app = func.FunctionApp()


@app.function_name("deliver_message")
@app.queue_trigger(arg_name="message", queue_name="mail-outbound", connection="AzureWebJobsStorage")
def deliver_message(msg: func.QueueMessage) -> None:
    """The trigger binds `message`, but the parameter is `msg`."""
