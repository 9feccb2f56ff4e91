"""The hostile-input suite calls the registered functions as the host would, with the function
tests' fixtures: the process-wide gateway on in-memory storage, and its clients `app` and
`other`."""

from tests.functions.conftest import (  # noqa: F401 (fixtures, found by name)
    clients,
    event_table,
    fallback_queue,
    gateway,
    misconfigured,
    settings,
)
