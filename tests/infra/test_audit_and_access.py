"""infra/ records who touched what and grants no more than the app needs: the Key Vault, the blob
and table services and the Function App send their logs to Log Analytics; the app's blob role
covers its own containers only and its Key Vault role the SendGrid secret only; deleted blobs
can be restored; operators can sign in with Entra ID instead of holding the admin key, with
every route an app or SendGrid calls left outside that sign-in."""

from __future__ import annotations

import json
import re
from typing import Any

import azure.functions as func

from tests.functions.test_auth import HTTP_FUNCTIONS, PUBLIC_ROUTES
from tests.infra.conftest import INFRA, parse_bicep

APP = INFRA / "app"
ALL_ACCESS = ["StorageRead", "StorageWrite", "StorageDelete"]


def resources(name: str) -> dict[str, Any]:
    """The resources of infra/app/<name>.bicep, as pycep (checkov's parser) reads them."""
    found: dict[str, Any] = parse_bicep(APP / f"{name}.bicep")["resources"]
    return found


def flat(value: Any) -> str:
    """A pycep expression written back as Bicep-like text: `a.b`, `a[b]`, `f(x, y)`."""
    if isinstance(value, dict) and "operator" in value:
        operator = value["operator"]
        operands = [flat(operand) for operand in operator["operands"].values()]
        if operator["type"] == "property_accessor":
            return ".".join(operands)
        if operator["type"] == "index_accessor":
            return f"{operands[0]}[{operands[1]}]"
        return f"{operator['type']}({', '.join(operands)})"
    if isinstance(value, dict) and "function" in value:
        function = value["function"]
        arguments = [flat(argument) for argument in function["parameters"].values()]
        return f"{function['type']}({', '.join(arguments)})"
    if isinstance(value, list):
        return "[" + ", ".join(flat(item) for item in value) + "]"
    return str(value)


def config(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's body, whether or not it is deployed on a condition (`= if (...) {`)."""
    body: dict[str, Any] = resource["config"]
    return body["config"] if "condition" in body else body


def diagnostics(file: str) -> dict[str, tuple[str, list[str]]]:
    """Each diagnostic setting in a file: the resource it watches and its enabled log categories."""
    return {
        name: (
            config(resource)["scope"],
            [log["category"] for log in config(resource)["properties"]["logs"] if log["enabled"]],
        )
        for name, resource in resources(file).items()
        if resource["type"] == "Microsoft.Insights/diagnosticSettings"
    }


def test_should_send_every_key_vault_audit_event_to_log_analytics() -> None:
    assert diagnostics("keyvault") == {"auditDiagnostics": ("vault", ["AuditEvent"])}
    [setting] = [r for r in resources("keyvault").values() if r["type"].endswith("Settings")]
    assert config(setting)["properties"]["workspaceId"] == "logAnalyticsWorkspaceId"


def test_should_log_every_read_write_and_delete_of_blobs_and_tables() -> None:
    assert diagnostics("storage") == {
        # Reads of the queue service include the host's polling: writes and deletes only.
        "queueDiagnostics": ("queueService", ["StorageWrite", "StorageDelete"]),
        "blobDiagnostics": ("blobService", ALL_ACCESS),
        "tableDiagnostics": ("tableService", ALL_ACCESS),
    }


def test_should_send_the_function_apps_logs_to_log_analytics() -> None:
    assert diagnostics("api") == {"appDiagnostics": ("functionApp", ["FunctionAppLogs"])}


def test_should_send_what_acs_did_with_each_mail_to_log_analytics() -> None:
    assert diagnostics("acs") == {
        "emailDiagnostics": (
            "communication",
            ["EmailSendMailOperational", "EmailStatusUpdateOperational"],
        )
    }


def test_should_wire_every_diagnostic_setting_to_the_workspace_of_main() -> None:
    modules = parse_bicep(INFRA / "main.bicep")["modules"]
    for module in ("storage", "keyVault", "api", "acs"):
        given = config(modules[module])["params"]["logAnalyticsWorkspaceId"]
        assert flat(given) == "monitoring.outputs.logAnalyticsWorkspaceId", module


def test_should_keep_deleted_blobs_and_containers_restorable() -> None:
    blob_service = config(resources("storage")["blobService"])["properties"]
    parameter = parse_bicep(APP / "storage.bicep")["parameters"]["blobSoftDeleteRetentionDays"]

    for policy in ("deleteRetentionPolicy", "containerDeleteRetentionPolicy"):
        assert blob_service[policy] == {"enabled": True, "days": "blobSoftDeleteRetentionDays"}
    assert parameter["default"] >= 1


def role_assignments() -> dict[str, dict[str, Any]]:
    """rbac.bicep's role assignments, by name."""
    return {
        name: resource
        for name, resource in resources("rbac").items()
        if resource["type"] == "Microsoft.Authorization/roleAssignments"
    }


def test_should_grant_no_blob_role_on_the_whole_account() -> None:
    variables = parse_bicep(APP / "rbac.bicep")["variables"]
    on_the_account = {
        name: assignment["config"]
        for name, assignment in role_assignments().items()
        if config(assignment)["scope"] == "storage"
    }

    assert "'Storage Blob Data Owner'" not in variables["roles"]["value"]
    assert set(on_the_account) == {"appStorageRoles", "userStorageRoles"}
    for assignment in on_the_account.values():
        assert assignment["loop_type"]["detail"]["array_name"] == "accountRoles"
    assert variables["accountRoles"]["value"] == [
        "Storage Queue Data Contributor",
        "Storage Table Data Contributor",
    ]


def test_should_give_the_app_blob_access_to_its_own_containers_only() -> None:
    rbac = parse_bicep(INFRA / "main.bicep")["modules"]["rbac"]["config"]["params"]
    containers = {
        config(resource)["name"]
        for resource in resources("storage").values()
        if resource["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers"
    }
    blob_roles = {
        name: assignment["config"]
        for name, assignment in role_assignments().items()
        if "blobRole" in flat(config(assignment)["properties"]["roleDefinitionId"])
    }

    # The host's own containers exist before the host starts, so it never creates one.
    assert {"azure-webjobs-hosts", "azure-webjobs-secrets"} <= containers
    assert flat(rbac["appContainerNames"]) == (
        "concat(storage.outputs.hostContainerNames, [storage.outputs.deploymentContainerName, "
        "storage.outputs.largeMessageContainerName])"
    )
    assert parse_bicep(APP / "rbac.bicep")["variables"]["blobRole"]["value"] == (
        "Storage Blob Data Contributor"
    )
    assert set(blob_roles) == {"appContainerRoles", "userLargeMessageRole"}
    app = blob_roles["appContainerRoles"]
    assert app["loop_type"]["detail"]["array_name"] == "appContainerNames"
    assert flat(app["config"]["scope"]) == "appContainers[index]"
    # Operators reach the mail bodies (a purge deletes them), not the host's keys.
    assert flat(config(role_assignments()["userLargeMessageRole"])["scope"]) == (
        "largeMessageContainer"
    )


def test_should_let_the_app_read_the_sendgrid_and_smtp_secrets_and_no_other() -> None:
    secrets_roles = {
        name: config(assignment)
        for name, assignment in role_assignments().items()
        if "Key Vault Secrets User" in json.dumps(config(assignment))
    }
    main = parse_bicep(INFRA / "main.bicep")["modules"]["rbac"]["config"]["params"]

    assert list(secrets_roles) == ["appSecretsRole", "appSmtpSecretRole"]
    assert secrets_roles["appSecretsRole"]["scope"] == "sendgridSecret"
    assert secrets_roles["appSmtpSecretRole"]["scope"] == "smtpSecret"
    assert config(resources("rbac")["smtpSecret"])["name"] == "smtpPasswordSecretName"
    assert resources("rbac")["appSmtpSecretRole"]["config"]["condition"] == (
        "smtpPasswordSecretExists"
    )
    assert flat(main["smtpPasswordSecretExists"]).startswith("or(not(empty(smtpPassword))")
    existing = resources("rbac")["sendgridSecret"]
    assert existing["existing"] is True
    assert config(existing)["name"] == "sendgridApiKeySecretName"
    # A scope must exist: granted once the template made the secret, or an operator said so.
    assert resources("rbac")["appSecretsRole"]["config"]["condition"] == (
        "sendgridApiKeySecretExists"
    )
    assert flat(main["sendgridApiKeySecretExists"]).startswith("or(not(empty(sendgridApiKey))")


def test_should_create_acs_and_let_the_app_send_through_it_only_with_the_acs_provider() -> None:
    main = parse_bicep(INFRA / "main.bicep")
    rbac = resources("rbac")
    role = config(rbac["acsEmailSender"])["properties"]

    assert main["modules"]["acs"]["config"]["condition"] == "usesAcs"
    assert flat(main["variables"]["usesAcs"]["value"]) == (
        "contains(split(to_lower(replace(mailProviders,  , )), ,), acs)"
    )
    given = flat(config(main["modules"]["rbac"])["params"]["communicationServiceName"])
    assert given == "conditional(usesAcs, communicationServiceName, )"
    for name in ("acsEmailSender", "appAcsRole"):
        assert rbac[name]["config"]["condition"] == "withAcs"
    # Send mail, as Microsoft's least custom role for it: no data actions, no keys, no deletes.
    [permissions] = role["permissions"]
    assert sorted(permissions["actions"]) == [
        "Microsoft.Communication/CommunicationServices/Read",
        "Microsoft.Communication/CommunicationServices/Write",
        "Microsoft.Communication/EmailServices/write",
    ]
    assert permissions["dataActions"] == []
    assert permissions["notActions"] == []
    # pycep reads `resourceGroup().id` without its `.id`: the text says it.
    text = (APP / "rbac.bicep").read_text(encoding="utf-8")
    assert re.search(r"assignableScopes: \[\s*resourceGroup\(\)\.id\s*\]", text)
    assignment = config(rbac["appAcsRole"])
    assert assignment["scope"] == "communication"
    assert flat(assignment["properties"]["roleDefinitionId"]) == "acsEmailSender.id"
    assert assignment["properties"]["principalId"] == "appPrincipalId"


def test_should_leave_operator_sign_in_off_unless_asked() -> None:
    parameters = parse_bicep(INFRA / "main.bicep")["parameters"]
    api = parse_bicep(APP / "api.bicep")

    assert parameters["operatorSignInClientId"]["default"] == ""
    assert parameters["operatorPrincipalIds"]["default"] == ""
    assert resources("api")["authSettings"]["config"]["condition"] == "operatorSignIn"
    assert flat(api["variables"]["operatorSignIn"]["value"]) == (
        "and(not(empty(operatorSignInClientId)), not(empty(operatorPrincipalIds)))"
    )
    # Without the sign-in the app's OPERATOR_PRINCIPAL_IDS is empty: it trusts no sign-in.
    given = parse_bicep(INFRA / "main.bicep")["modules"]["api"]["config"]["params"]
    assert flat(given["operatorPrincipalIds"]) == (
        "conditional(empty(operatorSignInClientId), , operatorPrincipalIds)"
    )
    app_settings = api["variables"]["appSettings"]["value"]
    assert app_settings["OPERATOR_PRINCIPAL_IDS"] == "operatorPrincipalIds"


def test_should_require_an_entra_sign_in_of_a_listed_operator() -> None:
    settings = config(resources("api")["authSettings"])
    entra = settings["properties"]["identityProviders"]["azureActiveDirectory"]

    assert config(resources("api")["authSettings"])["name"] == "authsettingsV2"
    assert settings["properties"]["platform"]["enabled"] is True
    assert settings["properties"]["globalValidation"]["requireAuthentication"] is True
    assert settings["properties"]["globalValidation"]["unauthenticatedClientAction"] == (
        "RedirectToLoginPage"
    )
    assert entra["registration"]["clientId"] == "operatorSignInClientId"
    assert "tenant().tenantId" in entra["registration"]["openIdIssuer"]
    policy = entra["validation"]["defaultAuthorizationPolicy"]
    assert policy == {"allowedPrincipals": {"identities": "operatorIds"}}


def excluded_path(route: str) -> str:
    """The excluded path that covers a route: `{id}` segments become `*`."""
    return "/api/" + re.sub(r"\{[^}]+\}", "*", route)


def test_should_leave_exactly_the_routes_apps_and_sendgrid_call_outside_the_sign_in() -> None:
    api = parse_bicep(APP / "api.bicep")
    excluded = api["variables"]["clientPaths"]["value"]
    callers = {
        excluded_path(trigger.route or "")
        for name, trigger, _ in HTTP_FUNCTIONS
        if trigger.auth_level == func.AuthLevel.ANONYMOUS
        # The console's page and the signed-in operator routes are what the sign-in is for.
        and name != "console"
        and not (trigger.route or "").startswith("signed-in/")
    }

    assert config(resources("api")["authSettings"])["properties"]["globalValidation"][
        "excludedPaths"
    ] == ("clientPaths")
    # A route with an {id} is excluded as its parent path plus a wildcard, and the parent too.
    assert set(excluded) == callers | {"/api/v1/messages"}
    assert "console" in PUBLIC_ROUTES
    assert not any(path.startswith(("/api/console", "/api/signed-in")) for path in excluded)
