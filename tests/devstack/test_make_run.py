"""`make run` (devstack/__main__.py): when it starts Azurite for the settings it is given."""

from __future__ import annotations

import pytest

from devstack.__main__ import _uses_development_storage

AZURE = "DefaultEndpointsProtocol=https;AccountName=stexample;EndpointSuffix=core.windows.net"


@pytest.mark.parametrize(
    ("settings", "starts"),
    [
        ({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, True),
        ({"AzureWebJobsStorage": AZURE}, False),
        ({"AzureWebJobsStorage": AZURE, "MAILGATE_STORAGE": "UseDevelopmentStorage=true"}, True),
        (
            {
                "AzureWebJobsStorage": AZURE,
                "AzureWebJobsMAILGATE_STORAGE": "usedevelopmentstorage=true",
            },
            True,
        ),
        ({"AzureWebJobsStorage": AZURE, "MAILGATE_STORAGE__accountName": "stdata"}, False),
    ],
)
def test_should_start_azurite_when_the_host_storage_or_the_data_uses_it(
    settings: dict[str, str], starts: bool
) -> None:
    assert _uses_development_storage(settings) is starts
