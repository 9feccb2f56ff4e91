"""The accept refuses what no provider of MAIL_PROVIDERS can carry: never accepted, never sent
as something else."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from tests.fakes import FakeMailQueue
from tests.functions.test_messages import post, problem_of
from tests.functions.test_sendgrid_compat import fields_of
from tests.functions.test_sendgrid_compat import post as post_v3
from tests.samples import BASE_ENV, body, message, sendgrid_mail


@pytest.fixture
def settings() -> Settings:
    """A gateway with only an SMTP relay to send through."""
    return Settings.from_env({**BASE_ENV, "MAIL_PROVIDERS": "smtp", "SMTP_HOST": "127.0.0.1"})


@pytest.mark.usefixtures("gateway")
def test_should_accept_a_mail_the_relay_can_carry(fake_queue: FakeMailQueue) -> None:
    response = post(body(message(html="<p>Hi</p>", cc=["carol@example.net"])))

    assert response.status_code == 202
    assert len(fake_queue.messages) == 1


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"template_id": "d-1", "subject": None, "text": None}, "#/template_id"),
        ({"send_at": "2026-03-02T11:30:00+00:00"}, "#/send_at"),
        ({"categories": ["orders"]}, "#/categories"),
        ({"custom_args": {"order": "42"}}, "#/custom_args"),
    ],
)
def test_should_answer_422_naming_the_field_no_provider_can_carry(
    fake_queue: FakeMailQueue, fields: dict[str, object], pointer: str
) -> None:
    document = {k: v for k, v in message(**fields).items() if v is not None}

    response = post(body(document))

    assert response.status_code == 422
    problem = problem_of(response)
    assert "MAIL_PROVIDERS (smtp)" in problem["detail"]
    assert [p["pointer"] for p in problem["errors"]] == [pointer]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_answer_422_in_sendgrids_format_for_a_v3_body_without_sendgrid(
    fake_queue: FakeMailQueue,
) -> None:
    response = post_v3(body(sendgrid_mail()))

    assert response.status_code == 422
    assert len(fields_of(response)) == 1
    assert fake_queue.messages == []
