"""SendGrid's error format: fields named as SendGrid names them, one entry per problem."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.errors import FieldProblem, json_pointer
from shared.sendgrid_v3.error_format import (
    refusal_body,
    sendgrid_field,
    validation_errors,
    validation_problems,
)
from shared.sendgrid_v3.schema import MailSend
from tests.sendgrid_samples import NOW, minimal_payload


def validation_error(payload: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        MailSend.model_validate(payload, strict=True, context={"now": NOW})
    return caught.value


@pytest.mark.parametrize(
    ("pointer", "field"),
    [
        ("#/personalizations/0/to/1/email", "personalizations.0.to.1.email"),
        ("#/from", "from"),
        (
            "#/personalizations/2/custom_args/mailgate_id",
            "personalizations.2.custom_args.mailgate_id",
        ),
        ("#/headers/X~1Trace~0Id", "headers.X/Trace~Id"),
        ("#", None),
    ],
)
def test_should_name_fields_as_sendgrid_does(pointer: str, field: str | None) -> None:
    assert sendgrid_field(pointer) == field


def test_should_name_the_field_of_any_path_put_in_a_pointer() -> None:
    assert sendgrid_field(json_pointer(["headers", "a/b~c", 3])) == "headers.a/b~c.3"


def test_should_give_one_entry_per_problem() -> None:
    body = refusal_body(
        "the message has 2 invalid field(s)",
        (
            FieldProblem("#/personalizations/0/to/1/email", "Does not contain a valid address."),
            FieldProblem("#/from", "The from address is not allowed."),
        ),
    )

    assert body == {
        "errors": [
            {
                "message": "Does not contain a valid address.",
                "field": "personalizations.0.to.1.email",
                "help": None,
            },
            {"message": "The from address is not allowed.", "field": "from", "help": None},
        ]
    }


def test_should_give_a_refusal_without_problems_one_entry_without_a_field() -> None:
    assert refusal_body("Content-Type should be application/json.") == {
        "errors": [
            {"message": "Content-Type should be application/json.", "field": None, "help": None}
        ]
    }


def test_should_locate_validation_problems_by_json_pointer() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["to"].append({"email": "bob(at)example.org"})
    payload["headers"] = {"X-Trace/Id": 1}

    problems = validation_problems(validation_error(payload))

    assert problems == (
        FieldProblem("#/personalizations/0/to/1/email", "Does not contain a valid address."),
        FieldProblem("#/headers/X-Trace~1Id", "The header values must be strings."),
    )


def test_should_word_validation_errors_as_the_entries_of_their_problems() -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["cc"] = [{"email": "Ann@example.com"}]
    payload["personalizations"][0]["to"] = [{"email": "ann@example.com"}]

    error = validation_error(payload)

    assert validation_errors(error) == refusal_body("", validation_problems(error))["errors"]
    assert [e["field"] for e in validation_errors(error)] == ["personalizations.0.cc.0.email"]
