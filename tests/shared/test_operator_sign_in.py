"""Who the signed-in operator routes let through: OPERATOR_PRINCIPAL_IDS, read and checked."""

from __future__ import annotations

import pytest

from shared.errors import ConfigurationError, OperatorNotAllowed, OperatorNotSignedIn
from shared.operator_sign_in import MAX_OPERATORS, OperatorSignIn
from tests.samples import BASE_ENV, settings_with

OPERATOR = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
OTHER = "11111111-2222-4333-8444-555555555555"
SIGNED_IN = {"X-MS-CLIENT-PRINCIPAL-ID": OPERATOR, "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}


def test_should_be_off_without_operators_whatever_the_platform_says() -> None:
    sign_in = OperatorSignIn.from_env({"WEBSITE_AUTH_ENABLED": "True"})

    assert not sign_in.configured
    with pytest.raises(OperatorNotSignedIn, match="OPERATOR_PRINCIPAL_IDS is empty"):
        sign_in.operator(SIGNED_IN)


@pytest.mark.parametrize("value", ["True", "true", "1", " TRUE "])
def test_should_read_the_platforms_flag_as_the_host_does(value: str) -> None:
    sign_in = OperatorSignIn.from_env(
        {"OPERATOR_PRINCIPAL_IDS": OPERATOR, "WEBSITE_AUTH_ENABLED": value}
    )

    assert sign_in.operator(SIGNED_IN) == OPERATOR


def test_should_read_object_ids_separated_by_commas_in_any_case() -> None:
    sign_in = OperatorSignIn.from_env({"OPERATOR_PRINCIPAL_IDS": f" {OPERATOR.upper()} , {OTHER},"})

    assert sign_in.principal_ids == {OPERATOR, OTHER}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"{OPERATOR},someone@example.org", "entry 2 is not an Entra object id"),
        ("not-a-guid", "entry 1 is not an Entra object id"),
        (",".join([OPERATOR] * (MAX_OPERATORS + 1)), f"more than {MAX_OPERATORS} operators"),
    ],
)
def test_should_refuse_a_list_that_is_not_object_ids_naming_the_setting(
    value: str, problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"OPERATOR_PRINCIPAL_IDS.*{problem}"):
        OperatorSignIn.from_env({"OPERATOR_PRINCIPAL_IDS": value})


def test_should_be_part_of_the_settings_and_off_by_default() -> None:
    assert settings_with().operator_sign_in == OperatorSignIn()
    configured = settings_with(OPERATOR_PRINCIPAL_IDS=OPERATOR, WEBSITE_AUTH_ENABLED="True")
    assert configured.operator_sign_in.operator(SIGNED_IN) == OPERATOR
    with pytest.raises(ConfigurationError, match="OPERATOR_PRINCIPAL_IDS"):
        settings_with(OPERATOR_PRINCIPAL_IDS="everyone")
    assert "OPERATOR_PRINCIPAL_IDS" not in BASE_ENV


def test_should_refuse_an_operator_it_does_not_list() -> None:
    sign_in = OperatorSignIn.from_env(
        {"OPERATOR_PRINCIPAL_IDS": OTHER, "WEBSITE_AUTH_ENABLED": "True"}
    )

    with pytest.raises(OperatorNotAllowed, match=f"{OPERATOR} is not listed"):
        sign_in.operator(SIGNED_IN)
