"""Runs one function invocation the way the Python worker does, with the host's log lines."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions import _abc as func_abc

logger = logging.getLogger(__name__)

# The worker passes a `context` argument to any function that declares one.
CONTEXT_PARAM = "context"


class HostError(Exception):
    """A problem with the app or its configuration that stops the host from starting."""


class WorkerProcessExited(Exception):
    """The function ended the Python worker process (SystemExit or KeyboardInterrupt)."""


@dataclass(frozen=True)
class FunctionSpec:
    """One function of the app, as read from its binding metadata."""

    name: str
    func: Callable[..., Any]
    trigger: Any
    directory: str

    # Both read once, as the worker reads them once when it loads a function, not per call
    # (Azure/azure-functions-python-worker, azure_functions_worker/functions.py,
    # Registry.add_function: FunctionInfo.is_async and requires_context). The signature cost
    # about 15 us a call here.
    @functools.cached_property
    def is_async(self) -> bool:
        """Whether the worker would await the function on its event loop."""
        return inspect.iscoroutinefunction(self.func)

    @functools.cached_property
    def wants_context(self) -> bool:
        """Whether the function declares the worker's `context` parameter."""
        return CONTEXT_PARAM in inspect.signature(self.func).parameters


class _TraceContext(func_abc.TraceContext):
    """Empty W3C trace context: nothing upstream traces local calls."""

    @property
    def trace_state(self) -> str:
        """Trace state header value."""
        return ""

    @property
    def trace_parent(self) -> str:
        """Trace parent header value."""
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        """Trace attributes."""
        return {}


class _RetryContext(func_abc.RetryContext):
    """Retry context of a first attempt: the host retries queue messages itself."""

    @property
    def retry_count(self) -> int:
        """Attempts made so far by a retry policy."""
        return 0

    @property
    def max_retry_count(self) -> int:
        """Attempts allowed by a retry policy."""
        return 0

    @property
    def exception(self) -> Any:
        """Exception of the previous attempt."""
        return None


class _Context(func.Context):
    """The `context` argument the worker passes."""

    def __init__(self, invocation_id: str, spec: FunctionSpec) -> None:
        self._invocation_id = invocation_id
        self._spec = spec
        self._local = threading.local()

    @property
    def invocation_id(self) -> str:
        """Id of this invocation."""
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        """Thread-local storage of the invocation."""
        return self._local

    @property
    def function_name(self) -> str:
        """Name of the function."""
        return self._spec.name

    @property
    def function_directory(self) -> str:
        """Directory of the app."""
        return self._spec.directory

    @property
    def trace_context(self) -> func_abc.TraceContext:
        """Distributed tracing context."""
        return _TraceContext()

    @property
    def retry_context(self) -> func_abc.RetryContext:
        """Retry policy context."""
        return _RetryContext()


# The Functions host starts a Python worker with PYTHON_THREADPOOL_THREAD_COUNT=1000 when the
# setting is absent or empty (Azure/azure-functions-host, DefaultWorkerProcessFactory
# .ApplyWorkerConcurrencyLimits, RpcWorkerConstants.DefaultConcurrencyLimit), so the worker's
# own fallback, ThreadPoolExecutor's min(32, cores + 4), is never reached in Azure.
HOST_DEFAULT_THREAD_COUNT = 1000


def default_thread_count() -> int:
    """PYTHON_THREADPOOL_THREAD_COUNT as the Functions host sets it when the app does not."""
    return HOST_DEFAULT_THREAD_COUNT


class Invoker:
    """Calls functions: `def` in a shared thread pool, `async def` on the event loop."""

    def __init__(self, thread_count: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=thread_count, thread_name_prefix="function")
        self.in_flight = 0

    async def invoke(
        self, spec: FunctionSpec, bind: Callable[[], dict[str, Any]], reason: str
    ) -> Any:
        """Bind the arguments, call the function and log like the host; re-raise its error."""
        invocation_id = str(uuid.uuid4())
        logger.info(
            "Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation_id
        )
        started = time.monotonic()
        self.in_flight += 1
        try:
            # A binding error fails the invocation without the function running, as in the host.
            kwargs = bind()
            if spec.wants_context:
                kwargs[CONTEXT_PARAM] = _Context(invocation_id, spec)
            if spec.is_async:
                result = await spec.func(**kwargs)
            else:
                call = functools.partial(spec.func, **kwargs)
                ctx = contextvars.copy_context()
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, ctx.run, call)
        except Exception:
            self._executed(spec, "Failed", invocation_id, started)
            logger.exception("Exception while executing function: Functions.%s", spec.name)
            raise
        except (SystemExit, KeyboardInterrupt) as exc:
            # In Azure these end the worker process, not the host: the Python worker catches only
            # Exception around a call (azure-functions-python-worker, dispatcher.py
            # _handle__invocation_request), so they leave its event loop and it exits. The host
            # then fails that worker's invocations and starts a new one (azure-functions-host,
            # RpcFunctionInvocationDispatcher.WorkerError -> GrpcWorkerChannel.TryFailExecutions):
            # an HTTP caller gets 500 and a queue message is released after visibilityTimeout.
            # Here the function runs inside the host, so only its own invocation fails (Azure
            # would fail every invocation of that worker); the host must not die with it.
            self._executed(spec, "Failed", invocation_id, started)
            logger.error(
                "Language worker process exited during Functions.%s (%s); the host fails the "
                "invocation and starts a new worker",
                spec.name,
                type(exc).__name__,
            )
            raise WorkerProcessExited(f"{type(exc).__name__} in Functions.{spec.name}") from exc
        finally:
            self.in_flight -= 1
        self._executed(spec, "Succeeded", invocation_id, started)
        return result

    @staticmethod
    def _executed(spec: FunctionSpec, outcome: str, invocation_id: str, started: float) -> None:
        duration = round((time.monotonic() - started) * 1000)
        level = logging.INFO if outcome == "Succeeded" else logging.ERROR
        logger.log(
            level,
            "Executed 'Functions.%s' (%s, Id=%s, Duration=%dms)",
            spec.name,
            outcome,
            invocation_id,
            duration,
        )

    def shutdown(self) -> None:
        """Stop the pool's idle threads; a function still running keeps its thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
