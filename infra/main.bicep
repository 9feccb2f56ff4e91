// mailgate on Azure: a Flex Consumption Function App that reaches Storage, Key Vault and
// Application Insights through one user-assigned identity. `azd up` deploys this file with
// main.parameters.json; `az deployment sub create` works the same way without azd.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Required. Name of the environment (azd sets it); used in the resource group name, the resource token and tags.')
param environmentName string

@minLength(1)
@description('Required. Azure region for every resource. It must offer the Flex Consumption plan: `az functionapp list-flexconsumption-locations`.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Optional. Object id of the deploying user or principal; when set it gets the same data roles as the app (and Key Vault Secrets Officer) so it can read the queues and set the SendGrid key. Empty: no such role assignments.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
@description('Optional. Kind of principal that principalId names.')
param principalType string = 'User'

@description('Optional. Resource group name; empty means rg-<environmentName>.')
param resourceGroupName string = ''

@description('Optional. Key Vault name, 3-24 characters; empty means a generated one. Purge protection keeps a deleted vault\'s name reserved for its retention period, so a redeployment after `azd down` may need a new name.')
param keyVaultName string = ''

@minLength(1)
@description('Required. ALLOWED_SENDERS: comma-separated addresses and @domains that may appear in `from`, for example \'noreply@example.com,@example.org\'.')
param allowedSenders string

@secure()
@description('Optional. SendGrid API key stored as the Key Vault secret sendgrid-api-key. Empty: no secret version is created; set it later with `az keyvault secret set` (see docs/deploy.md).')
param sendgridApiKey string = ''

@allowed([
  ''
  'false'
  'true'
])
@description('Optional. \'true\' once the secret sendgrid-api-key exists though sendgridApiKey is empty (an operator set it with `az keyvault secret set`): the app\'s read access is granted on that secret, so the secret must exist first. A string, so that azd can leave it empty.')
param sendgridApiKeySecretExists string = ''

@description('Optional. MAIL_PROVIDERS: the providers mail goes out by, in order of preference, comma-separated: sendgrid, acs, smtp (docs/providers.md). With acs, the template creates Azure Communication Services Email with an Azure-managed domain and lets the app\'s identity send through it.')
param mailProviders string = 'sendgrid'

@description('Optional. Where the Azure Communication Services Email resources keep their data at rest (the acs provider), for example \'United States\', \'Europe\', \'UK\'.')
param acsDataLocation string = 'United States'

@description('Optional. ACS_EMAIL_SENDERS: the addresses and @domains the acs provider may send from, comma-separated. Empty: DoNotReply@ the Azure-managed domain the template creates (output ACS_EMAIL_SENDER_DOMAIN).')
param acsEmailSenders string = ''

@description('Optional. FAILOVER_ON_AMBIGUOUS: whether a failure that may have sent the mail (a timeout after sending) moves the next attempt to the next provider, at the risk of a second copy.')
param failoverOnAmbiguous bool = false

@description('Optional. SMTP_HOST: the authenticated SMTP relay of the smtp provider (STARTTLS on SMTP_PORT). Empty without it.')
param smtpHost string = ''

@minValue(1)
@maxValue(65535)
@description('Optional. SMTP_PORT: the relay\'s submission port.')
param smtpPort int = 587

@description('Optional. SMTP_USERNAME: the user the smtp provider signs in to the relay as (AUTH).')
param smtpUsername string = ''

@minValue(0)
@maxValue(1000)
@description('Optional. PROVIDER_BREAKER_FAILURES: retryable failures in a row after which a provider\'s circuit breaker opens (docs/providers.md); 0 turns breakers off.')
param providerBreakerFailures int = 5

@minValue(1)
@maxValue(3600)
@description('Optional. PROVIDER_BREAKER_COOLDOWN_SECONDS: how long an open breaker sends nothing to its provider before a trial mail.')
param providerBreakerCooldownSeconds int = 30

@description('Optional. SENDGRID_MAX_EMAILS_PER_SECOND: the most mails per second all instances send by SendGrid (docs/providers.md). Empty: no brake.')
param sendgridMaxEmailsPerSecond string = ''

@description('Optional. SMTP_MAX_EMAILS_PER_SECOND: the same for the smtp provider. Empty: no brake.')
param smtpMaxEmailsPerSecond string = ''

@description('Optional. ACS_MAX_EMAILS_PER_SECOND: the same for the acs provider. Empty: no brake.')
param acsMaxEmailsPerSecond string = ''

@secure()
@description('Optional. The SMTP relay\'s password, stored as the Key Vault secret smtp-password. Empty: no secret version is created; set it later with `az keyvault secret set` (see docs/deploy.md).')
param smtpPassword string = ''

@allowed([
  ''
  'false'
  'true'
])
@description('Optional. \'true\' once the secret smtp-password exists though smtpPassword is empty (an operator set it): the app\'s read access is granted on that secret, so the secret must exist first. A string, so that azd can leave it empty.')
param smtpPasswordSecretExists string = ''

@description('Optional. Client id of a Microsoft Entra app registration for the operators\' sign-in: App Service Authentication in front of the app, so that operators sign in to the console and the operator routes instead of holding the admin key. Empty (or no operatorPrincipalIds): no sign-in, and the admin key opens the console.')
param operatorSignInClientId string = ''

@description('Optional. OPERATOR_PRINCIPAL_IDS: comma-separated object ids of the Entra users who may sign in as operators; App Service Authentication lets only them sign in, and the app lets only them use the operator routes. Used with operatorSignInClientId.')
param operatorPrincipalIds string = ''

@minLength(3)
@description('Required. Address that receives the dead-letter, dead-letters-waiting and queue-backlog alerts.')
param alertEmailAddress string

@allowed([
  '3.11'
  '3.12'
  '3.13'
])
@description('Optional. Python version of the Flex Consumption runtime.')
param pythonVersion string = '3.12'

@allowed([
  512
  2048
  4096
])
@description('Optional. Memory of each Flex Consumption instance, in MB.')
param instanceMemoryMB int = 2048

// Flex Consumption's documented range: "The lowest maximum scale is currently 40. The highest
// currently supported value is 1000." (MicrosoftDocs/azure-docs,
// articles/azure-functions/flex-consumption-plan.md, Considerations).
@minValue(40)
@maxValue(1000)
@description('Optional. Most instances the app scales out to, 40-1000 on Flex Consumption. Not a brake on SendGrid: at 40 instances with 24 deliveries in flight each, the queue trigger alone can send thousands of mails a second.')
param maximumInstanceCount int = 40

// Not bounded in Microsoft's docs (Flex's default for Python apps is 1); at most the worker's
// PYTHON_THREADPOOL_THREAD_COUNT (32, api.bicep), since the HTTP functions are `def` and each
// request holds a thread. docs/performance.md explains the default.
@minValue(1)
@maxValue(32)
@description('Optional. Concurrent HTTP requests per instance before Flex Consumption adds an instance (triggers.http.perInstanceConcurrency). Flex\'s own default for Python apps is 1 request per instance.')
param httpPerInstanceConcurrency int = 8

@minLength(3)
@maxLength(56)
@description('Optional. MAIL_QUEUE_NAME: the mail queue; its poison queue <name>-poison is created with it.')
param mailQueueName string = 'mail-outbound'

@minLength(3)
@maxLength(63)
@description('Optional. STATUS_TABLE_NAME: the table that records each message\'s delivery status.')
param statusTableName string = 'mailstatus'

@minLength(3)
@maxLength(63)
@description('Optional. CLIENT_TABLE_NAME: the table of clients (apps allowed to send), their key digests and rate counters.')
param clientTableName string = 'mailclients'

@description('Optional. LARGE_MESSAGE_CONTAINER_NAME: the blob container that holds the bodies of messages too large for one queue message (claim-check) until they are sent or purged.')
param largeMessageContainerName string = 'mail-large'

@description('Optional. SENDGRID_API_BASE_URL: the SendGrid (or compatible) API, https.')
param sendgridApiBaseUrl string = 'https://api.sendgrid.com'

@minValue(1)
@maxValue(60)
@description('Optional. SENDGRID_CONNECT_TIMEOUT_SECONDS: connect timeout to SendGrid.')
param sendgridConnectTimeoutSeconds int = 5

@minValue(1)
@maxValue(200)
@description('Optional. SENDGRID_TIMEOUT_SECONDS: read and write timeout to SendGrid.')
param sendgridTimeoutSeconds int = 30

@minValue(1024)
@maxValue(30000000)
@description('Optional. MAX_REQUEST_BYTES: largest accepted request body; at most 30,000,000, as SendGrid refuses a message of 30 MB or more.')
param maxRequestBytes int = 30000000

@minValue(1)
@maxValue(100)
@description('Optional. MAX_DELIVERY_ATTEMPTS: attempts before a retryable failure is dead-lettered.')
param maxDeliveryAttempts int = 8

@minValue(1)
@maxValue(100)
@description('Optional. LARGE_MESSAGES_AT_ONCE: messages too large for one queue message that an instance accepts or delivers at once; each may take 150 MB, so 6 fits a 2,048 MB instance.')
param largeMessagesAtOnce int = 6

@minValue(1)
@maxValue(604800)
@description('Optional. RETRY_BASE_DELAY_SECONDS: delay after the first failed attempt; it doubles each attempt.')
param retryBaseDelaySeconds int = 30

@minValue(1)
@maxValue(604800)
@description('Optional. RETRY_MAX_DELAY_SECONDS: longest delay between attempts.')
param retryMaxDelaySeconds int = 3600

@minValue(1)
@description('Optional. IDEMPOTENCY_RETENTION_HOURS: how long a delivered message id is remembered to refuse a second send.')
param idempotencyRetentionHours int = 24

@minValue(1)
@maxValue(3650)
@description('Optional. ACTIVITY_RETENTION_DAYS: how long the console\'s activity rows are kept before the retention timer deletes them.')
param activityRetentionDays int = 7

@minValue(8)
@maxValue(3650)
@description('Optional. LARGE_MESSAGE_RETENTION_MARGIN_DAYS: days a claim-check body left under live/ is kept beyond MAX_DELIVERY_ATTEMPTS x RETRY_MAX_DELAY_SECONDS before the retention timer (and the lifecycle rule) deletes it; at least the 7 days the Functions host keeps its poison copy of a message, and a day.')
param largeMessageRetentionMarginDays int = 8
@minValue(1)
@maxValue(3650)
@description('Optional. STATUS_RETENTION_DAYS: how long status records and their delivery events are kept after a message was accepted; must be longer than maxDeliveryAttempts x retryMaxDelaySeconds.')
param statusRetentionDays int = 30

@description('Optional. RETENTION_SCHEDULE: when the retention timer runs (NCRONTAB, UTC, seconds first); hourly at minute 17 by default.')
param retentionSchedule string = '0 17 * * * *'

@description('Optional. SENDGRID_WEBHOOK_PUBLIC_KEY: the verification key of SendGrid\'s signed Event Webhook (base64, as SendGrid shows it). A public key, so a plain app setting. Empty: the webhook route answers 503 and the rest of the gateway works.')
param sendgridWebhookPublicKey string = ''

@minValue(0)
@description('Optional. The backlog alert fires when the storage account holds more queue messages than this (mail queue and poison queue together).')
param queuedMessagesAlertThreshold int = 100

@description('Optional. Tags added to every resource.')
param tags object = {}

// azd finds the resource group and the app by these tags.
var allTags = union(tags, {
  'azd-env-name': environmentName
})
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var abbreviations = {
  actionGroup: 'ag-'
  appInsights: 'appi-'
  communicationService: 'acs-'
  emailService: 'ecs-'
  functionApp: 'func-'
  identity: 'id-'
  keyVault: 'kv-'
  logAnalytics: 'log-'
  plan: 'plan-'
  resourceGroup: 'rg-'
  storage: 'st'
}
var functionAppName = '${abbreviations.functionApp}${resourceToken}'
// Whether MAIL_PROVIDERS lists the acs provider (shared/settings.py reads it the same way).
var usesAcs = contains(split(toLower(replace(mailProviders, ' ', '')), ','), 'acs')
var communicationServiceName = '${abbreviations.communicationService}${resourceToken}'
// Flex Consumption keeps the deployment package in this blob container.
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

resource resourceGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbreviations.resourceGroup}${environmentName}'
  location: location
  tags: allTags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: resourceGroup
  params: {
    name: '${abbreviations.identity}api-${resourceToken}'
    location: location
    tags: allTags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: resourceGroup
  params: {
    logAnalyticsName: '${abbreviations.logAnalytics}${resourceToken}'
    applicationInsightsName: '${abbreviations.appInsights}${resourceToken}'
    location: location
    tags: allTags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: resourceGroup
  params: {
    name: '${abbreviations.storage}${resourceToken}'
    location: location
    tags: allTags
    deploymentContainerName: deploymentContainerName
    mailQueueName: mailQueueName
    statusTableName: statusTableName
    clientTableName: clientTableName
    largeMessageContainerName: largeMessageContainerName
    // The lifecycle rule's age, from the same values as the app settings.
    maxDeliveryAttempts: maxDeliveryAttempts
    retryMaxDelaySeconds: retryMaxDelaySeconds
    largeMessageRetentionMarginDays: largeMessageRetentionMarginDays
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: resourceGroup
  params: {
    name: !empty(keyVaultName) ? keyVaultName : '${abbreviations.keyVault}${resourceToken}'
    location: location
    tags: allTags
    sendgridApiKey: sendgridApiKey
    smtpPassword: smtpPassword
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module acs 'app/acs.bicep' = if (usesAcs) {
  name: 'acs'
  scope: resourceGroup
  params: {
    communicationServiceName: communicationServiceName
    emailServiceName: '${abbreviations.emailService}${resourceToken}'
    dataLocation: acsDataLocation
    tags: allTags
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: resourceGroup
  params: {
    name: functionAppName
    planName: '${abbreviations.plan}${resourceToken}'
    location: location
    tags: allTags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    // The data shares the host's account until its traffic needs an account of its own
    // (docs/performance.md): then name that account here and give the identity its data roles.
    dataStorageAccountName: storage.outputs.name
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}${deploymentContainerName}'
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    sendgridApiKeySecretUri: keyVault.outputs.sendgridApiKeySecretUri
    smtpPasswordSecretUri: keyVault.outputs.smtpPasswordSecretUri
    mailProviders: mailProviders
    failoverOnAmbiguous: failoverOnAmbiguous
    smtpHost: smtpHost
    smtpPort: smtpPort
    smtpUsername: smtpUsername
    acsEmailEndpoint: usesAcs ? acs.outputs.endpoint : ''
    acsEmailSenders: usesAcs ? (empty(acsEmailSenders) ? 'DoNotReply@${acs.outputs.senderDomain}' : acsEmailSenders) : ''
    providerBreakerFailures: providerBreakerFailures
    providerBreakerCooldownSeconds: providerBreakerCooldownSeconds
    sendgridMaxEmailsPerSecond: sendgridMaxEmailsPerSecond
    smtpMaxEmailsPerSecond: smtpMaxEmailsPerSecond
    acsMaxEmailsPerSecond: acsMaxEmailsPerSecond
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    allowedSenders: allowedSenders
    mailQueueName: mailQueueName
    statusTableName: statusTableName
    clientTableName: clientTableName
    largeMessageContainerName: storage.outputs.largeMessageContainerName
    sendgridApiBaseUrl: sendgridApiBaseUrl
    sendgridConnectTimeoutSeconds: sendgridConnectTimeoutSeconds
    sendgridTimeoutSeconds: sendgridTimeoutSeconds
    maxRequestBytes: maxRequestBytes
    maxDeliveryAttempts: maxDeliveryAttempts
    largeMessagesAtOnce: largeMessagesAtOnce
    retryBaseDelaySeconds: retryBaseDelaySeconds
    retryMaxDelaySeconds: retryMaxDelaySeconds
    idempotencyRetentionHours: idempotencyRetentionHours
    activityRetentionDays: activityRetentionDays
    largeMessageRetentionMarginDays: largeMessageRetentionMarginDays
    statusRetentionDays: statusRetentionDays
    retentionSchedule: retentionSchedule
    sendgridWebhookPublicKey: sendgridWebhookPublicKey
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    operatorSignInClientId: operatorSignInClientId
    // Without the sign-in the app must trust none: no operator ids reach its settings.
    operatorPrincipalIds: empty(operatorSignInClientId) ? '' : operatorPrincipalIds
  }
  // The Key Vault reference for SENDGRID_API_KEY resolves with the identity's Key Vault role, so
  // the role exists before the app first starts. rbac takes nothing from the app: no cycle.
  dependsOn: [
    rbac
  ]
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: resourceGroup
  params: {
    storageAccountName: storage.outputs.name
    appContainerNames: concat(storage.outputs.hostContainerNames, [
      storage.outputs.deploymentContainerName
      storage.outputs.largeMessageContainerName
    ])
    largeMessageContainerName: storage.outputs.largeMessageContainerName
    keyVaultName: keyVault.outputs.name
    sendgridApiKeySecretName: keyVault.outputs.sendgridApiKeySecretName
    // Parenthesized for pycep (checkov's parser), which reads `!a || b` as `!(a || b)`.
    sendgridApiKeySecretExists: (!empty(sendgridApiKey)) || sendgridApiKeySecretExists == 'true'
    smtpPasswordSecretName: keyVault.outputs.smtpPasswordSecretName
    smtpPasswordSecretExists: (!empty(smtpPassword)) || smtpPasswordSecretExists == 'true'
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    communicationServiceName: usesAcs ? communicationServiceName : ''
    appPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
  // The ACS role's scope is the resource, which must exist first.
  dependsOn: [
    acs
  ]
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: resourceGroup
  params: {
    actionGroupName: '${abbreviations.actionGroup}mailgate-${resourceToken}'
    alertEmailAddress: alertEmailAddress
    tags: allTags
    storageAccountName: storage.outputs.name
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    location: location
    poisonQueueName: '${mailQueueName}-poison'
    queuedMessagesThreshold: queuedMessagesAlertThreshold
  }
}

@description('Region of the deployment.')
output AZURE_LOCATION string = location

@description('Tenant of the deployment.')
output AZURE_TENANT_ID string = tenant().tenantId

@description('Resource group that holds every resource.')
output AZURE_RESOURCE_GROUP string = resourceGroup.name

@description('Name of the Function App (for `make publish APP=...`).')
output AZURE_FUNCTION_APP_NAME string = api.outputs.name

@description('Name of the Function App under its azd service name.')
output SERVICE_API_NAME string = api.outputs.name

@description('HTTPS base URL of the gateway.')
output SERVICE_API_URI string = api.outputs.uri

@description('Storage account with the mail queue, its poison queue and the status table.')
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name

@description('Key Vault that holds the SendGrid API key.')
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name

@description('Name of the Key Vault secret the app reads as SENDGRID_API_KEY.')
output SENDGRID_API_KEY_SECRET_NAME string = keyVault.outputs.sendgridApiKeySecretName

@description('Client id of the app\'s user-assigned identity.')
output AZURE_FUNCTION_IDENTITY_CLIENT_ID string = identity.outputs.clientId

@description('Domain of the acs provider\'s sender addresses (DoNotReply@ this domain); empty without it.')
output ACS_EMAIL_SENDER_DOMAIN string = usesAcs ? acs.outputs.senderDomain : ''
