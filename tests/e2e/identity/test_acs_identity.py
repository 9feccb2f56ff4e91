"""End to end in identity mode with the acs provider: the app reaches ACS Email as it does in
Azure, with ACS_EMAIL_ENDPOINT and its managed identity's token (the SDK's bearer-token policy,
the credential storage uses), over HTTPS to the ACS stand-in, which takes nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from devstack.acs_standin import ACS_AUDIENCE, AcsEmailStandIn
from devstack.identity_endpoint import ISSUER, LOCAL_IDENTITY_CLIENT_ID
from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import RunningHost
from tests.e2e.identity.conftest import (
    IdentityStack,
    acs_identity_settings,
    identity_host_settings,
)
from tests.e2e.test_acs import accepted, full_mail, settled

# The resource azure-identity asks the identity endpoint for, from the SDK's scope
# "https://communication.azure.com//.default" (devstack/acs_standin/server.py ACS_AUDIENCE).
ACS_RESOURCE = f"{ACS_AUDIENCE}/"


@pytest.fixture(scope="module")
def acs_identity_host(
    identity_stack: IdentityStack,
    standin: SendGridStandIn,
    identity_acs: AcsEmailStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningHost]:
    """The gateway in identity mode with acs its only provider, on a queue of its own."""
    settings = {
        **identity_host_settings(identity_stack, standin),
        "MAIL_QUEUE_NAME": "mail-acs-identity",
        "MAIL_PROVIDERS": "acs",
        **acs_identity_settings(identity_acs),
    }
    host = RunningHost(settings, tmp_path_factory.mktemp("identity-acs-host"))
    yield host
    host.stop()


def test_should_deliver_through_acs_signed_in_with_the_managed_identity(
    acs_identity_host: RunningHost,
    identity_acs: AcsEmailStandIn,
    identity_stack: IdentityStack,
) -> None:
    identity_acs.reset()

    message_id = accepted(acs_identity_host, full_mail("By ACS, with the identity"))
    status = settled(acs_identity_host, message_id)

    assert status["status"] == "sent", status
    assert status["provider"] == "acs"
    assert status["providers_tried"] == ["acs"]
    record = json.loads((identity_acs.outbox / f"{message_id}.json").read_text())
    assert record["payload"]["content"]["subject"] == "By ACS, with the identity"
    assert [m["operation_id"] for m in identity_acs.mails()] == [message_id]
    # The app had no key to sign with: only the endpoint, as infra/ deploys it.
    assert "ACS_EMAIL_CONNECTION_STRING" not in acs_identity_host.settings
    assert identity_acs.api_key not in acs_identity_host.settings.values()


def test_should_reach_acs_with_a_bearer_token_for_acs_from_the_identity_endpoint(
    acs_identity_host: RunningHost,
    identity_acs: AcsEmailStandIn,
    identity_stack: IdentityStack,
) -> None:
    identity_acs.reset()

    message_id = accepted(acs_identity_host, full_mail("Which credential"))
    settled(acs_identity_host, message_id)
    sends = identity_acs.requests()

    assert [r["outcome"] for r in sends] == ["accepted"]
    # The SDK's BearerTokenCredentialPolicy, never its HMACCredentialsPolicy (access key).
    assert [r["auth"] for r in sends] == ["Bearer"]
    token = sends[0]["token"]
    assert (token["aud"], token["iss"], token["appid"]) == (
        ACS_RESOURCE,
        ISSUER,
        LOCAL_IDENTITY_CLIENT_ID,
    )
    issued = [t for t in identity_stack.endpoint.issued if t.resource == ACS_RESOURCE]
    assert issued
    assert {t.client_id for t in issued} == {LOCAL_IDENTITY_CLIENT_ID}
