"""Index a Functions app the way the Python 3.13 worker does when the host starts it.

    python -I index_app.py <app directory>

Run it with the Python of an environment that holds the app's requirements and
`azure-functions-runtime`. It imports `function_app.py` from that directory, loads the binding
registry and calls the worker's own `handle_event.index_functions`, which refuses what the host
would refuse at start-up (an `arg_name` that is not a parameter, an output not typed
`func.Out[...]`, ...). It prints one JSON document: `{"functions": [...]}` and exits 0, or
`{"error": "..."}` and exits 1.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any


class _Message:
    """Stands in for a protobuf message of the host's RPC protocol: keeps its fields."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class _BindingInfo(_Message):
    """BindingInfo, with the enum numbers of FunctionRpc.proto (Direction and DataType)."""

    out = 1
    inout = 2
    undefined = 0
    string = 1
    binary = 2
    stream = 3


# `in` is a keyword: set it by name.
setattr(_BindingInfo, "in", 0)


class _Protos:
    """The part of the host's `protos` module that indexing uses."""

    BindingInfo = _BindingInfo
    RpcFunctionMetadata = _Message
    RpcRetryOptions = _Message
    ParameterBinding = _Message


def index(app_directory: str) -> list[dict[str, Any]]:
    """The worker's index of the app: one entry per function it accepts."""
    app_directory = os.path.abspath(app_directory)
    # The worker runs with the app's directory as working directory and first on sys.path.
    os.chdir(app_directory)
    sys.path.insert(0, app_directory)
    handle_event = importlib.import_module("azure_functions_runtime.handle_event")
    meta = importlib.import_module("azure_functions_runtime.bindings.meta")
    # The host hands the worker its protobuf module at start-up (WorkerInitRequest).
    setattr(handle_event, "protos", _Protos)  # noqa: B010
    meta.load_binding_registry()
    results = handle_event.index_functions(
        os.path.join(app_directory, "function_app.py"), app_directory
    )
    functions = []
    for metadata in results or []:
        bindings = [json.loads(raw) for raw in metadata.raw_bindings]
        functions.append(
            {
                "name": metadata.name,
                "script_file": os.path.relpath(metadata.script_file, app_directory),
                "bindings": [
                    {"type": b.get("type"), "name": b.get("name"), "direction": b.get("direction")}
                    for b in bindings
                ],
            }
        )
    return functions


def main() -> int:
    """Print the index of the app named on the command line."""
    try:
        functions = index(sys.argv[1])
    except Exception as error:
        message = "".join(traceback.format_exception_only(type(error), error)).strip()
        print(json.dumps({"error": message}))
        return 1
    print(json.dumps({"functions": functions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
