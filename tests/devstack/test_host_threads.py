"""The local host sizes the worker's thread pool as the Functions host does in Azure."""

from __future__ import annotations

import pytest

from devstack.host import thread_count
from devstack.host_invoke import HostError

SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"


@pytest.mark.parametrize("settings", [{}, {SETTING: ""}])
def test_should_give_the_worker_1000_threads_when_the_setting_is_absent(
    settings: dict[str, str],
) -> None:
    # Azure/azure-functions-host, DefaultWorkerProcessFactory.ApplyWorkerConcurrencyLimits: an
    # absent or empty setting becomes RpcWorkerConstants.DefaultConcurrencyLimit, "1000", before
    # the Python worker starts; the worker's own min(32, cores + 4) never applies in Azure.
    assert thread_count(settings) == 1000


def test_should_take_the_thread_count_the_app_sets() -> None:
    assert thread_count({SETTING: "32"}) == 32


@pytest.mark.parametrize("raw", ["0", "-3", "many"])
def test_should_refuse_a_thread_count_that_is_not_a_positive_integer(raw: str) -> None:
    with pytest.raises(HostError, match=SETTING):
        thread_count({SETTING: raw})
