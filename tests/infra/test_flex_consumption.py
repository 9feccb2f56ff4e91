"""infra/ and host.json hold to what the Flex Consumption plan takes: no setting or site property
it refuses, its instance range, HTTP concurrency and a function timeout set rather than left to
the platform, and the app started only after its identity can read the SendGrid key."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from shared.storage_transport import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS
from tests.infra.conftest import INFRA, bicep_files, parse_bicep
from tests.infra.flex_consumption import (
    APP_SETTINGS,
    FUNCTION_TIMEOUT_DEFAULT_SECONDS,
    MAXIMUM_INSTANCE_COUNT_RANGE,
    PLATFORM_UPDATE_GRACE_SECONDS,
    SITE_PROPERTIES,
)
from tests.infra.venvs import ROOT

REFUSED = {name.lower(): name for name in [*APP_SETTINGS, *SITE_PROPERTIES]}
REFUSED_SETTINGS = {name.lower() for name in APP_SETTINGS}
REASONS = {name.lower(): reason for name, reason in {**APP_SETTINGS, **SITE_PROPERTIES}.items()}
TOKEN = re.compile(
    r"(?P<string>'(?:[^'\\]|\\.)*')|(?P<comment>//.*)|(?P<word>[A-Za-z_]\w*)|(?P<mark>[{}\[\],:?])|\S"
)
# Storage calls one delivery attempt can make besides SendGrid's: the claim, the claim-checked
# body, the `sent` record and the body's delete.
STORAGE_CALLS_PER_DELIVERY = 4


def refused_names(text: str) -> Iterator[tuple[int, str]]:
    """(line, name) for every object key, and every `name:` value, that Flex Consumption refuses.

    Keys are what Bicep writes before `:` at the start of a line or after `{` or `,`, quoted or
    not, so site properties, app settings as an object and app settings as `{ name: ..., value:
    ... }` pairs are all found, in nested resources too; comments and string values are not keys.
    """
    for number, line in enumerate(text.splitlines(), 1):
        tokens: list[tuple[str, str]] = []
        for match in TOKEN.finditer(line):
            if match.lastgroup == "comment":
                break
            tokens.append((match.lastgroup or "", match.group()))
        for index, (kind, value) in enumerate(tokens[:-1]):
            before = tokens[index - 1][1] if index else "{"
            if kind not in ("word", "string") or tokens[index + 1][1] != ":" or before not in "{,":
                continue
            key = value.strip("'")
            if key.lower() in REFUSED:
                yield number, key
            following = tokens[index + 2] if index + 2 < len(tokens) else ("", "")
            if key == "name" and following[0] == "string":
                named = following[1].strip("'")
                if named.lower() in REFUSED_SETTINGS:
                    yield number, named


def leaves(value: Any) -> Iterator[str]:
    """Every string in a pycep structure."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)


def module_dependencies(parsed: dict[str, Any]) -> dict[str, set[str]]:
    """For each module of a parsed file, the modules it takes outputs from or names in dependsOn."""
    modules: dict[str, Any] = parsed["modules"]
    dependencies: dict[str, set[str]] = {}
    for name, module in modules.items():
        config = {k: v for k, v in module["config"].items() if k != "name"}
        used = set(leaves(config))
        dependencies[name] = {
            other
            for other in modules
            if other != name and any(leaf == other or f"${{{other}." in leaf for leaf in used)
        }
    return dependencies


def decorator(declaration: dict[str, Any], kind: str) -> Any:
    [found] = [d["argument"] for d in declaration["decorators"] if d["type"] == kind]
    return found


def host_json() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    return document


def duration(text: str) -> timedelta:
    """A host.json time span, `[d.]hh:mm:ss`."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{2}):(\d{2}):(\d{2})", text)
    assert match, f"not a host.json time span: {text!r}"
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def test_should_set_no_setting_or_site_property_that_flex_consumption_refuses() -> None:
    found = [
        f"{path.relative_to(INFRA).as_posix()}:{number}: {name} ({REASONS[name.lower()]})"
        for path in bicep_files()
        for number, name in refused_names(path.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_should_find_refused_names_however_bicep_writes_them() -> None:
    text = "\n".join(
        [
            "// No FUNCTIONS_WORKER_RUNTIME: Flex takes it from functionAppConfig.",
            "var appSettings = {",
            "  FUNCTIONS_EXTENSION_VERSION: '~4'",
            "  'WEBSITE_RUN_FROM_PACKAGE': '1'",
            "  NOTE: 'ftpsState is gone'",
            "}",
            "resource app 'Microsoft.Web/sites@2024-04-01' = {",
            "  properties: {",
            "    siteConfig: {",
            "      ftpsState: 'Disabled' // refused",
            "      LinuxFxVersion: 'PYTHON|3.12'",
            "      appSettings: [",
            "        { name: 'SCM_DO_BUILD_DURING_DEPLOYMENT', value: 'true' }",
            "        { name: 'MAIL_QUEUE_NAME', value: enabled ? 'alwaysOn' : 'x' }",
            "      ]",
            "    }",
            "  }",
            "  resource web 'config' = {",
            "    name: 'web'",
            "    properties: { use32BitWorkerProcess: false, http20Enabled: true }",
            "  }",
            "}",
        ]
    )

    assert list(refused_names(text)) == [
        (3, "FUNCTIONS_EXTENSION_VERSION"),
        (4, "WEBSITE_RUN_FROM_PACKAGE"),
        (10, "ftpsState"),
        (11, "LinuxFxVersion"),
        (13, "SCM_DO_BUILD_DURING_DEPLOYMENT"),
        (20, "use32BitWorkerProcess"),
    ]


def test_should_keep_maximum_instance_count_within_what_flex_consumption_allows() -> None:
    parameter = parse_bicep(INFRA / "main.bicep")["parameters"]["maximumInstanceCount"]
    lowest, highest = MAXIMUM_INSTANCE_COUNT_RANGE

    assert decorator(parameter, "min_value") == lowest
    assert decorator(parameter, "max_value") == highest
    assert lowest <= parameter["default"] <= highest
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    assert "maximumInstanceCount" not in given["parameters"] or (
        lowest <= int(given["parameters"]["maximumInstanceCount"]["value"]) <= highest
    )


def test_should_start_the_app_only_after_its_key_vault_role_exists() -> None:
    main = parse_bicep(INFRA / "main.bicep")

    assert "rbac" in main["modules"]["api"]["config"]["dependsOn"]
    # The role assignments take the identity's principal id, not the app's: no cycle.
    dependencies = module_dependencies(main)
    assert "api" not in dependencies["rbac"]
    assert {"identity", "keyVault"} <= dependencies["rbac"]


def test_should_have_no_cycle_between_modules() -> None:
    # dependsOn names count as dependencies too: they are strings in the module's config.
    dependencies = module_dependencies(parse_bicep(INFRA / "main.bicep"))
    reached: dict[str, set[str]] = {}

    def reach(name: str, path: tuple[str, ...]) -> set[str]:
        assert name not in path, f"cycle: {' -> '.join((*path, name))}"
        if name not in reached:
            found = set(dependencies[name])
            for other in dependencies[name]:
                found |= reach(other, (*path, name))
            reached[name] = found
        return reached[name]

    assert "rbac" in reach("api", ())


def test_should_time_out_a_function_after_a_delivery_attempt_and_within_platform_grace() -> None:
    main = parse_bicep(INFRA / "main.bicep")["parameters"]
    sendgrid = decorator(main["sendgridConnectTimeoutSeconds"], "max_value") + decorator(
        main["sendgridTimeoutSeconds"], "max_value"
    )
    storage = STORAGE_CALLS_PER_DELIVERY * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS)

    timeout = duration(host_json()["functionTimeout"]).total_seconds()

    # Longer than the slowest attempt the settings allow, so the delivery's own timeouts fire
    # first (a functionTimeout restarts the worker with every invocation in it); no longer than
    # the 10 minutes a platform update waits, and shorter than Flex's 30-minute default.
    assert sendgrid + storage < timeout <= PLATFORM_UPDATE_GRACE_SECONDS
    assert timeout < FUNCTION_TIMEOUT_DEFAULT_SECONDS


def test_should_set_http_concurrency_per_instance_within_the_worker_threads() -> None:
    api = parse_bicep(INFRA / "app" / "api.bicep")
    main = parse_bicep(INFRA / "main.bicep")
    scale = api["resources"]["functionApp"]["config"]["properties"]["functionAppConfig"][
        "scaleAndConcurrency"
    ]
    parameter = main["parameters"]["httpPerInstanceConcurrency"]
    threads = int(api["variables"]["appSettings"]["value"]["PYTHON_THREADPOOL_THREAD_COUNT"])

    assert scale["triggers"]["http"]["perInstanceConcurrency"] == "httpPerInstanceConcurrency"
    assert main["modules"]["api"]["config"]["params"]["httpPerInstanceConcurrency"] == (
        "httpPerInstanceConcurrency"
    )
    # Each request holds a worker thread (the HTTP functions are `def`): more concurrency than
    # threads would queue requests inside an instance that the scaler counts as having room.
    assert 0 < decorator(parameter, "min_value") <= parameter["default"]
    assert parameter["default"] <= decorator(parameter, "max_value") <= threads


def test_should_read_host_json_time_spans() -> None:
    assert duration("00:10:00") == timedelta(minutes=10)
    assert duration("1.02:03:04") == timedelta(days=1, hours=2, minutes=3, seconds=4)
