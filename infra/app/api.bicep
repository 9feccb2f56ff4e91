// The gateway: a Python Function App on the Flex Consumption plan, running as the user-assigned
// identity. Every setting the code reads is set here under the name the code uses; the SendGrid
// key is a Key Vault reference, storage and Application Insights use the identity.

@description('Required. Name of the Function App (also its default host name).')
param name string

@description('Required. Name of the Flex Consumption plan.')
param planName string

@description('Required. Azure region.')
param location string

@description('Optional. Tags for the plan and the app.')
param tags object = {}

@description('Optional. Name of the azd service this app deploys (azure.yaml).')
param serviceName string = 'api'

@description('Required. Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Required. Client id of that identity.')
param identityClientId string

@description('Required. Storage account for host storage (AzureWebJobsStorage): keys, leases, timer schedules, the deployment package.')
param storageAccountName string

@description('Required. Storage account for the gateway\'s data (MAILGATE_STORAGE): the queues, the status and client tables, the large-message container. It may be storageAccountName; the identity needs Storage Queue, Table and Blob data roles on it.')
param dataStorageAccountName string

@description('Required. URL of the blob container that holds the deployment package.')
param deploymentContainerUrl string

@description('Required. Application Insights connection string.')
param applicationInsightsConnectionString string

@description('Required. Versionless URI of the Key Vault secret with the SendGrid API key.')
param sendgridApiKeySecretUri string

@description('Required. Versionless URI of the Key Vault secret with the SMTP relay\'s password.')
param smtpPasswordSecretUri string

@description('Required. The MAIL_PROVIDERS app setting: the providers in use, in order of preference.')
param mailProviders string

@description('Required. The FAILOVER_ON_AMBIGUOUS app setting.')
param failoverOnAmbiguous bool

@description('Required. The SMTP_HOST app setting; empty without the smtp provider.')
param smtpHost string

@description('Required. The SMTP_PORT app setting.')
param smtpPort int

@description('Required. The SMTP_USERNAME app setting; empty without the smtp provider.')
param smtpUsername string

@description('Optional. The ACS_EMAIL_ENDPOINT app setting: the ACS resource the acs provider sends through with the app\'s identity; empty without it.')
param acsEmailEndpoint string = ''

@description('Optional. The ACS_EMAIL_SENDERS app setting: the addresses and @domains ACS may send from; empty without the acs provider.')
param acsEmailSenders string = ''
@description('Required. The PROVIDER_BREAKER_FAILURES app setting.')
param providerBreakerFailures int

@description('Required. The PROVIDER_BREAKER_COOLDOWN_SECONDS app setting.')
param providerBreakerCooldownSeconds int

@description('Required. The SENDGRID_MAX_EMAILS_PER_SECOND app setting; empty: no brake.')
param sendgridMaxEmailsPerSecond string

@description('Required. The SMTP_MAX_EMAILS_PER_SECOND app setting; empty: no brake.')
param smtpMaxEmailsPerSecond string

@description('Required. The ACS_MAX_EMAILS_PER_SECOND app setting; empty: no brake.')
param acsMaxEmailsPerSecond string

@description('Required. Python version.')
param pythonVersion string

@description('Required. Memory of each instance, in MB.')
param instanceMemoryMB int

@description('Required. Most instances the app scales out to.')
param maximumInstanceCount int

@description('Required. Concurrent HTTP invocations per instance, the HTTP scaler\'s target (functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency).')
param httpPerInstanceConcurrency int

@description('Required. The ALLOWED_SENDERS app setting.')
param allowedSenders string

@description('Required. The MAIL_QUEUE_NAME app setting.')
param mailQueueName string

@description('Required. The STATUS_TABLE_NAME app setting.')
param statusTableName string

@description('Required. The CLIENT_TABLE_NAME app setting.')
param clientTableName string

@description('Required. The LARGE_MESSAGE_CONTAINER_NAME app setting.')
param largeMessageContainerName string

@description('Required. The SENDGRID_API_BASE_URL app setting.')
param sendgridApiBaseUrl string

@description('Required. The SENDGRID_CONNECT_TIMEOUT_SECONDS app setting.')
param sendgridConnectTimeoutSeconds int

@description('Required. The SENDGRID_TIMEOUT_SECONDS app setting.')
param sendgridTimeoutSeconds int

@description('Required. The MAX_REQUEST_BYTES app setting.')
param maxRequestBytes int

@description('Required. The MAX_DELIVERY_ATTEMPTS app setting.')
param maxDeliveryAttempts int

@description('Required. The LARGE_MESSAGES_AT_ONCE app setting.')
param largeMessagesAtOnce int

@description('Required. The RETRY_BASE_DELAY_SECONDS app setting.')
param retryBaseDelaySeconds int

@description('Required. The RETRY_MAX_DELAY_SECONDS app setting.')
param retryMaxDelaySeconds int

@description('Required. The IDEMPOTENCY_RETENTION_HOURS app setting.')
param idempotencyRetentionHours int

@description('Required. The ACTIVITY_RETENTION_DAYS app setting.')
param activityRetentionDays int

@description('Required. The LARGE_MESSAGE_RETENTION_MARGIN_DAYS app setting.')
param largeMessageRetentionMarginDays int
@description('Required. The STATUS_RETENTION_DAYS app setting.')
param statusRetentionDays int

@description('Required. The RETENTION_SCHEDULE app setting: the retention timer\'s NCRONTAB schedule.')
param retentionSchedule string

@description('Optional. The SENDGRID_WEBHOOK_PUBLIC_KEY app setting; empty leaves the Event Webhook route closed.')
param sendgridWebhookPublicKey string = ''

@description('Required. Log Analytics workspace that receives the app\'s FunctionAppLogs.')
param logAnalyticsWorkspaceId string

@description('Optional. Client id of the Entra app registration operators sign in through (App Service Authentication); empty, or no operatorPrincipalIds: no sign-in.')
param operatorSignInClientId string = ''

@description('Optional. The OPERATOR_PRINCIPAL_IDS app setting: comma-separated object ids of the operators who may sign in; empty without operatorSignInClientId.')
param operatorPrincipalIds string = ''

// App Service Authentication in front of the app for operators, only with someone to let in.
// (Parenthesized for pycep, which reads `!a && !b` as `!(a && !b)`.)
var operatorSignIn = (!empty(operatorSignInClientId)) && (!empty(operatorPrincipalIds))
var operatorIds = split(replace(operatorPrincipalIds, ' ', ''), ',')
// What stays reachable without a sign-in: the routes apps and SendGrid call with their own
// credentials (a client key, SendGrid's signature) and the public ones. Everything else, the
// console and every operator route included, asks for an Entra sign-in first. tests/infra checks
// this list against the app's anonymous routes.
var clientPaths = [
  '/api/v1/messages'
  '/api/v1/messages/*'
  '/api/v1/client'
  '/api/v3/mail/send'
  '/api/v1/events/sendgrid'
  '/api/health'
  '/api/openapi.json'
]

// Names as the code reads them (tests/infra checks this list against the code, docs/settings.md and
// local.settings.example.json). No FUNCTIONS_WORKER_RUNTIME: Flex takes it from functionAppConfig.
// Which providers MAIL_PROVIDERS lists (shared/settings.py reads it the same way).
var providers = split(toLower(replace(mailProviders, ' ', '')), ',')
var usesSendGrid = contains(providers, 'sendgrid')
var usesSmtp = contains(providers, 'smtp')

var appSettings = {
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // Always set, even to the host's account: the queue trigger then binds MAILGATE_STORAGE, and
  // moving the data to another account is a change of this value alone.
  MAILGATE_STORAGE__accountName: dataStorageAccountName
  MAILGATE_STORAGE__credential: 'managedidentity'
  MAILGATE_STORAGE__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // Read by the Python worker: it sets up the Azure Monitor exporter before it loads the app,
  // and the host (host.json telemetryMode OpenTelemetry) then stops exporting the worker's
  // forwarded log lines, so each line is stored once (shared/telemetry.py).
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // A reference only while SendGrid is in use, so that a deployment without it needs no secret.
  SENDGRID_API_KEY: usesSendGrid ? '@Microsoft.KeyVault(SecretUri=${sendgridApiKeySecretUri})' : ''
  MAIL_PROVIDERS: mailProviders
  FAILOVER_ON_AMBIGUOUS: string(failoverOnAmbiguous)
  SMTP_HOST: smtpHost
  SMTP_PORT: string(smtpPort)
  SMTP_USERNAME: smtpUsername
  // A reference only while the smtp provider is in use: an unresolved one (no secret yet) stops
  // the whole app with 503 naming SMTP_PASSWORD, as it does for SENDGRID_API_KEY.
  SMTP_PASSWORD: usesSmtp ? '@Microsoft.KeyVault(SecretUri=${smtpPasswordSecretUri})' : ''
  ACS_EMAIL_ENDPOINT: acsEmailEndpoint
  ACS_EMAIL_SENDERS: acsEmailSenders
  PROVIDER_BREAKER_FAILURES: string(providerBreakerFailures)
  PROVIDER_BREAKER_COOLDOWN_SECONDS: string(providerBreakerCooldownSeconds)
  SENDGRID_MAX_EMAILS_PER_SECOND: sendgridMaxEmailsPerSecond
  SMTP_MAX_EMAILS_PER_SECOND: smtpMaxEmailsPerSecond
  ACS_MAX_EMAILS_PER_SECOND: acsMaxEmailsPerSecond
  ALLOWED_SENDERS: allowedSenders
  MAIL_QUEUE_NAME: mailQueueName
  STATUS_TABLE_NAME: statusTableName
  CLIENT_TABLE_NAME: clientTableName
  LARGE_MESSAGE_CONTAINER_NAME: largeMessageContainerName
  IDEMPOTENCY_RETENTION_HOURS: string(idempotencyRetentionHours)
  ACTIVITY_RETENTION_DAYS: string(activityRetentionDays)
  LARGE_MESSAGE_RETENTION_MARGIN_DAYS: string(largeMessageRetentionMarginDays)
  STATUS_RETENTION_DAYS: string(statusRetentionDays)
  // The timer binds %RETENTION_SCHEDULE%: unset, the host fails to index that function.
  RETENTION_SCHEDULE: retentionSchedule
  SENDGRID_API_BASE_URL: sendgridApiBaseUrl
  SENDGRID_CONNECT_TIMEOUT_SECONDS: string(sendgridConnectTimeoutSeconds)
  SENDGRID_TIMEOUT_SECONDS: string(sendgridTimeoutSeconds)
  MAX_REQUEST_BYTES: string(maxRequestBytes)
  MAX_DELIVERY_ATTEMPTS: string(maxDeliveryAttempts)
  LARGE_MESSAGES_AT_ONCE: string(largeMessagesAtOnce)
  RETRY_BASE_DELAY_SECONDS: string(retryBaseDelaySeconds)
  RETRY_MAX_DELAY_SECONDS: string(retryMaxDelaySeconds)
  // A public key: nothing secret, so not a Key Vault reference.
  SENDGRID_WEBHOOK_PUBLIC_KEY: sendgridWebhookPublicKey
  // Empty unless main.bicep turns the sign-in below on: the app then trusts no sign-in at all
  // (shared/operator_sign_in.py).
  OPERATOR_PRINCIPAL_IDS: operatorPrincipalIds
  // Read by glibc in the worker at start: a freed block of 1 MiB or more goes back to the system
  // at once. Without it glibc raises its threshold after the first large free, and the worker's
  // peak over 24 messages of 29 MB, six at a time, was 1,600-1,890 MiB against 930-1,070 MiB
  // with it (docs/operations.md, Large messages).
  MALLOC_MMAP_THRESHOLD_: '1048576'
  // Read by the Python worker: threads for the `def` functions. Absent, the Functions host starts
  // the worker with 1000 (Azure/azure-functions-host, DefaultWorkerProcessFactory
  // .ApplyWorkerConcurrencyLimits); 32 bounds an instance's invocations and their memory, and is
  // at least batchSize + newBatchThreshold (host.json) and httpPerInstanceConcurrency.
  PYTHON_THREADPOOL_THREAD_COUNT: '32'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  // Zone redundancy on Flex Consumption needs zone-redundant storage and a region that offers it.
  // checkov:skip=CKV_AZURE_225: not yet a parameter; needs ZRS/GZRS storage and a supporting region
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    // Callers are apps holding a client key (Bearer); client certificates would need one per caller.
    clientCertEnabled: false
    // checkov:skip=CKV_AZURE_17: callers authenticate with the gateway's client keys, not client certificates
    // checkov:skip=CKV_AZURE_222: apps outside any VNet of ours call this API; no VNet integration yet
    publicNetworkAccess: 'Enabled'
    // The health endpoint checks settings and storage, which fail for every instance at once:
    // replacing instances cannot fix them, so App Service health check is not wired to it.
    // checkov:skip=CKV_AZURE_213: /api/health reports app-wide faults that instance replacement cannot fix
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      remoteDebuggingEnabled: false
      http20Enabled: true
      // No ftpsState: Flex Consumption refuses it (ARM error 51021); FTP is off through the
      // basicPublishingCredentialsPolicies below.
      // checkov:skip=CKV_AZURE_78: Flex Consumption refuses siteConfig.ftpsState; FTP is off through basicPublishingCredentialsPolicies
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      // Flex scales from zero; always-ready instances would be billed around the clock.
      // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero; the price is a cold start on the first request after idle
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: appSettings
  }

  // Deployments (azd, `func azure functionapp publish`) sign in with Entra ID; no publishing
  // user names and passwords.
  resource ftpCredentials 'basicPublishingCredentialsPolicies' = {
    name: 'ftp'
    properties: {
      allow: false
    }
  }

  resource scmCredentials 'basicPublishingCredentialsPolicies' = {
    name: 'scm'
    properties: {
      allow: false
    }
  }
}

// App Service Authentication ("Easy Auth") with Microsoft Entra ID, for operators: the console
// and the operator routes need a sign-in of one of operatorPrincipalIds, and the routes under
// /api/signed-in/ then need no admin key. On Flex Consumption the Functions host runs this
// authentication itself and sets WEBSITE_AUTH_ENABLED, which the app checks before it trusts the
// sign-in headers (Azure/azure-functions-host, JobHostEasyAuthMiddleware.cs). Properties: the
// authsettingsV2 reference (learn.microsoft.com/azure/templates/microsoft.web/sites/config-authsettingsv2).
// No client secret: Entra returns an ID token alone (implicit flow), which is all the sign-in
// needs; the app registration must allow ID tokens and the redirect /.auth/login/aad/callback.
// checkov reads any Microsoft.Web/sites/config as the site's configuration (siteConfig): the
// skips below are its checks of properties that authsettingsV2 does not have.
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = if (operatorSignIn) {
  // checkov:skip=CKV_AZURE_13: this resource is the App Service Authentication settings themselves (platform.enabled below)
  parent: functionApp
  // checkov:skip=CKV_AZURE_63: authsettingsV2 has no HTTP logging; the site's logs go to Log Analytics (appDiagnostics)
  name: 'authsettingsV2'
  // checkov:skip=CKV_AZURE_65: authsettingsV2 has no detailed error messages setting; it belongs to the site configuration
  properties: {
    // checkov:skip=CKV_AZURE_66: authsettingsV2 has no failed request tracing setting; it belongs to the site configuration
    platform: {
      enabled: true
    }
    // checkov:skip=CKV_AZURE_80: authsettingsV2 has no .NET Framework version; the app is Python on Flex Consumption
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: clientPaths
    }
    // checkov:skip=CKV_AZURE_88: authsettingsV2 has no storage mounts; the app uses no Azure Files share
    httpSettings: {
      requireHttps: true
    }
    // checkov:skip=CKV_AZURE_222: apps outside any VNet of ours call this API; no VNet integration yet (as functionApp)
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: operatorSignInClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          defaultAuthorizationPolicy: {
            allowedPrincipals: {
              identities: operatorIds
            }
          }
        }
      }
    }
    login: {
      // The app reads who signed in from the platform's headers; no provider tokens kept.
      tokenStore: {
        enabled: false
      }
    }
  }
}

// The host's and the app's log lines (FunctionAppLogs), kept in Log Analytics beside the storage
// and Key Vault audit logs. The app never logs a key, a body or a full address.
resource appDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'function-logs-to-log-analytics'
  scope: functionApp
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
  }
}

@description('Name of the Function App.')
output name string = functionApp.name

@description('HTTPS base URL of the Function App.')
output uri string = 'https://${functionApp.properties.defaultHostName}'
