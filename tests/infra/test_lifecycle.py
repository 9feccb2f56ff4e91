"""infra/ deletes leftover claim-check bodies as a backstop to the retention timer: a lifecycle
rule on the large-message container's live/ prefix only, after as many whole days as the
gateway's own retention (shared/settings.py large_message_retention), from the same values."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from shared.blobs import KEPT_PREFIX, LIVE_PREFIX
from shared.settings import Settings
from tests.infra.conftest import INFRA, parse_bicep
from tests.samples import BASE_ENV

STORAGE = parse_bicep(INFRA / "app" / "storage.bicep")
MAIN = parse_bicep(INFRA / "main.bicep")
PASSED_ON = ["maxDeliveryAttempts", "retryMaxDelaySeconds", "largeMessageRetentionMarginDays"]


def lifecycle_rules() -> list[dict[str, Any]]:
    [policy] = [
        r["config"]
        for r in STORAGE["resources"].values()
        if r["type"] == "Microsoft.Storage/storageAccounts/managementPolicies"
    ]
    assert policy["name"] == "default"  # the only name the service accepts
    rules: list[dict[str, Any]] = policy["properties"]["policy"]["rules"]
    return rules


def evaluate(expression: Any, parameters: dict[str, int]) -> int:
    """A Bicep integer expression as pycep reads it: names, max, + * and integer /."""
    if isinstance(expression, int):
        return expression
    if isinstance(expression, str):
        return parameters[expression]
    if "function" in expression:
        function = expression["function"]
        assert function["type"] == "max"
        return max(evaluate(a, parameters) for a in function["parameters"].values())
    operator = expression["operator"]
    left, right = (evaluate(o, parameters) for o in operator["operands"].values())
    results = {"add": left + right, "multiply": left * right, "divide": left // right}
    return results[operator["type"]]


def test_should_delete_only_base_block_blobs_under_the_live_prefix_of_the_large_container() -> None:
    [rule] = lifecycle_rules()
    definition = rule["definition"]

    assert (rule["enabled"], rule["type"]) == (True, "Lifecycle")
    assert definition["filters"]["blobTypes"] == ["blockBlob"]
    # Never the dead letters' bodies, nor the older ones at the container's root.
    live = f"${{largeMessageContainer.name}}/{LIVE_PREFIX}"
    assert definition["filters"]["prefixMatch"] == [live]
    assert not KEPT_PREFIX.startswith(LIVE_PREFIX)
    assert list(definition["actions"]) == ["baseBlob"]
    assert definition["actions"]["baseBlob"] == {
        "delete": {"daysAfterModificationGreaterThan": "liveBodyRetentionDays"}
    }


def test_should_take_the_rules_values_from_the_parameters_the_app_settings_come_from() -> None:
    params = MAIN["modules"]["storage"]["config"]["params"]

    assert {name: params[name] for name in PASSED_ON} == {name: name for name in PASSED_ON}


@pytest.mark.parametrize(
    ("attempts", "max_delay", "margin"),
    [(8, 3600, 8), (1, 1, 8), (100, 604800, 8), (3, 86400, 10), (24, 3600, 8)],
)
def test_should_keep_live_bodies_at_least_as_long_as_the_gateway_in_whole_days(
    attempts: int, max_delay: int, margin: int
) -> None:
    settings = Settings.from_env(
        {
            **BASE_ENV,
            "MAX_DELIVERY_ATTEMPTS": str(attempts),
            "RETRY_BASE_DELAY_SECONDS": "1",
            "RETRY_MAX_DELAY_SECONDS": str(max_delay),
            "LARGE_MESSAGE_RETENTION_MARGIN_DAYS": str(margin),
            # Status records must outlive a message's retries (100 x 7 days at the most).
            "STATUS_RETENTION_DAYS": "3650",
        }
    )
    expression = STORAGE["variables"]["liveBodyRetentionDays"]["value"]

    days = evaluate(
        expression,
        {
            "maxDeliveryAttempts": attempts,
            "retryMaxDelaySeconds": max_delay,
            "largeMessageRetentionMarginDays": margin,
        },
    )

    assert days == max(1, math.ceil(settings.large_message_retention / timedelta(days=1)))


def test_should_not_let_a_deployment_keep_live_bodies_for_less_than_the_hosts_poison_copy() -> None:
    for template in (STORAGE, MAIN):
        decorators = template["parameters"]["largeMessageRetentionMarginDays"]["decorators"]
        assert {"type": "min_value", "argument": 8} in decorators
