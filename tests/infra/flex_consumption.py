"""What the Flex Consumption plan does not take, and the limits it documents: one place for the
deployment checks to read.

Source: Microsoft Learn, "App settings reference for Azure Functions", section "Flex Consumption
plan deprecations" (MicrosoftDocs/azure-docs, articles/azure-functions/functions-app-settings.md),
which the Flex Consumption plan page links from "Deprecated properties and settings"
(articles/azure-functions/flex-consumption-plan.md). Read 2026-12. Azure Resource Manager refuses
the site properties outright (error 51021, "...site configuration properties
(Site.SiteConfig.FtpsState, ...) for Flex Consumption sites is invalid"); the app settings are
replaced by `functionAppConfig` or mean nothing there. Names are compared case-insensitively,
as ARM reads them.
"""

from __future__ import annotations

# App settings, with what replaces them on Flex Consumption.
APP_SETTINGS: dict[str, str] = {
    "ENABLE_ORYX_BUILD": "the remoteBuild parameter of a deployment",
    "FUNCTIONS_EXTENSION_VERSION": "set by the platform",
    "FUNCTIONS_WORKER_RUNTIME": "functionAppConfig.runtime.name",
    "FUNCTIONS_WORKER_RUNTIME_VERSION": "functionAppConfig.runtime.version",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY": "functionAppConfig.scaleAndConcurrency.triggers.http",
    "FUNCTIONS_WORKER_PROCESS_COUNT": "not valid",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED": "not valid",
    "SCM_DO_BUILD_DURING_DEPLOYMENT": "the remoteBuild parameter of a deployment",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING": "functionAppConfig.deployment",
    "WEBSITE_CONTENTOVERVNET": "not used for networking",
    "WEBSITE_CONTENTSHARE": "functionAppConfig.deployment",
    "WEBSITE_DNS_SERVER": "inherited from the integrated virtual network",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT": "scaleAndConcurrency.maximumInstanceCount",
    "WEBSITE_NODE_DEFAULT_VERSION": "functionAppConfig.runtime.version",
    "WEBSITE_RUN_FROM_PACKAGE": "not used for deployments",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION": "no content share",
    "WEBSITE_VNET_ROUTE_ALL": "not used for networking",
}

# Site properties (under `properties` or `properties.siteConfig`), with what replaces them.
SITE_PROPERTIES: dict[str, str] = {
    "alwaysOn": "not valid",
    "containerSize": "scaleAndConcurrency.instanceMemoryMB",
    "dnsConfiguration": "the virtual network's DNS servers",
    "ftpsState": "FTPS not supported; basicPublishingCredentialsPolicies turn FTP off",
    "isReserved": "not valid",
    "isXenon": "not valid",
    "javaVersion": "functionAppConfig.runtime.version",
    "linuxFxVersion": "functionAppConfig.runtime",
    "netFrameworkVersion": "functionAppConfig.runtime.version",
    "powerShellVersion": "functionAppConfig.runtime.version",
    "functionAppScaleLimit": "scaleAndConcurrency.maximumInstanceCount",
    "preWarmedInstanceCount": "scaleAndConcurrency.alwaysReady",
    "use32BitWorkerProcess": "32-bit not supported",
    "vnetBackupRestoreEnabled": "not used for networking",
    "vnetContentShareEnabled": "not used for networking",
    "vnetImagePullEnabled": "not used for networking",
    "vnetRouteAllEnabled": "not used for networking",
    "windowsFxVersion": "not valid",
}

# Same page, "Considerations": "The lowest maximum scale is currently 40. The highest currently
# supported value is 1000."
MAXIMUM_INSTANCE_COUNT_RANGE = (40, 1000)

# includes/functions-timeout-duration.md (2026-01): on Flex Consumption functionTimeout defaults
# to 30 minutes and has no maximum; an execution gets 60 minutes of grace at scale-in and 10 at
# platform updates, and one that runs past functionTimeout restarts the language worker with
# every invocation in it.
FUNCTION_TIMEOUT_DEFAULT_SECONDS = 30 * 60
PLATFORM_UPDATE_GRACE_SECONDS = 10 * 60
