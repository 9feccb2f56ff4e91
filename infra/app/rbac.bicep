// Every role assignment, in one place. Each is named guid(scope, principal, role), so a
// redeployment finds the same assignment instead of adding a second one.

@description('Required. Storage account the app uses.')
param storageAccountName string

@description('Required. Blob containers the app reads and writes: the Functions host\'s own (locks, timers, host ids, keys), the Flex Consumption deployment container and the large-message container.')
param appContainerNames array

@description('Required. The large-message container, which operators reach too (make purge deletes the bodies of purged dead letters).')
param largeMessageContainerName string

@description('Required. Key Vault that holds the SendGrid key.')
param keyVaultName string

@description('Required. Name of the Key Vault secret with the SendGrid key: the one secret the app may read.')
param sendgridApiKeySecretName string

@description('Required. Whether that secret exists (the template created it, or an operator did and said so): the app\'s read access is granted on the secret itself, which must exist to be a scope.')
param sendgridApiKeySecretExists bool

@description('Required. Name of the Key Vault secret with the SMTP relay\'s password.')
param smtpPasswordSecretName string

@description('Required. Whether that secret exists: as for the SendGrid key, read access is granted on the secret itself.')
param smtpPasswordSecretExists bool

@description('Optional. Communication Services resource of the acs provider; empty without it.')
param communicationServiceName string = ''

@description('Required. Application Insights component the app sends telemetry to.')
param applicationInsightsName string

@description('Required. Principal id of the app\'s user-assigned identity.')
param appPrincipalId string

@description('Optional. Principal id of the deploying user; empty: no role assignments for them.')
param userPrincipalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
@description('Optional. Kind of principal that userPrincipalId names.')
param userPrincipalType string = 'User'

// Built-in role definition ids, by name.
var roles = {
  'Key Vault Secrets Officer': 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  'Key Vault Secrets User': '4633458b-17de-408a-b874-0445c86b69e6'
  'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb'
  'Storage Blob Data Contributor': 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  'Storage Queue Data Contributor': '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  'Storage Table Data Contributor': '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

// On the account: Storage Queue Data Contributor rather than Reader + Message Processor (the host
// must release failed messages and create and write the poison queue); Table Data Contributor
// (status records, clients, and the tables the Functions host keeps its diagnostic events and
// scale metrics in).
var accountRoles = [
  'Storage Queue Data Contributor'
  'Storage Table Data Contributor'
]
// No blob role on the account: Blob Data Contributor on each container the app uses, and nothing
// else, so no other container (a copy of mail someone left in the account, say) is the app's.
// Microsoft documents Storage Blob Data Owner on the account for host storage because the
// runtime "needs ... the ability to create containers" (MicrosoftDocs/azure-docs,
// includes/functions-azurewebjobsstorage-permissions.md); storage.bicep creates the host's
// containers before the app starts, and Owner adds only POSIX ACLs (Data Lake) to Contributor.
var blobRole = 'Storage Blob Data Contributor'
var withUser = !empty(userPrincipalId)
var withAcs = !empty(communicationServiceName)

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'
  }
}

resource appContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [
  for container in appContainerNames: {
    parent: storage::blobService
    name: container
  }
]

resource largeMessageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: storage::blobService
  name: largeMessageContainerName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource sendgridSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: sendgridApiKeySecretName
}

resource smtpSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: smtpPasswordSecretName
}

resource communication 'Microsoft.Communication/communicationServices@2023-04-01' existing = if (withAcs) {
  name: communicationServiceName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource appStorageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in accountRoles: {
    name: guid(storage.id, appPrincipalId, roles[role])
    scope: storage
    properties: {
      principalId: appPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles[role])
    }
  }
]

resource appContainerRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (container, index) in appContainerNames: {
    name: guid(appContainers[index].id, appPrincipalId, roles[blobRole])
    scope: appContainers[index]
    properties: {
      principalId: appPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles[blobRole])
    }
  }
]

// The one secret, not the vault: whatever else is ever kept in the vault stays out of the app's
// reach. Until the secret exists there is nothing to grant; the Key Vault reference stays
// unresolved meanwhile and the app answers 503 naming SENDGRID_API_KEY (docs/deploy.md, "Set
// the SendGrid key").
resource appSecretsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (sendgridApiKeySecretExists) {
  name: guid(sendgridSecret.id, appPrincipalId, roles['Key Vault Secrets User'])
  scope: sendgridSecret
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Key Vault Secrets User'])
  }
}

// The SMTP password likewise: that secret alone, once it exists.
resource appSmtpSecretRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (smtpPasswordSecretExists) {
  name: guid(smtpSecret.id, appPrincipalId, roles['Key Vault Secrets User'])
  scope: smtpSecret
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Key Vault Secrets User'])
  }
}

// Sending mail through ACS with an Entra token needs no data role: Microsoft documents a custom
// role of these three actions on the Communication Services resource as the least one ("Use a
// custom role to limit permissions", ACS Email's SMTP authentication how-to). The built-in
// Communication and Email Service Owner could also list and regenerate the resource's keys.
resource acsEmailSender 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (withAcs) {
  name: guid(resourceGroup().id, 'mailgate ACS Email sender')
  properties: {
    // Role names are unique in the tenant: one per resource group that deploys mailgate.
    roleName: 'mailgate ACS Email sender (${resourceGroup().name})'
    description: 'Send mail through the Communication Services resources of this resource group, and nothing else.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: [
          'Microsoft.Communication/CommunicationServices/Read'
          'Microsoft.Communication/CommunicationServices/Write'
          'Microsoft.Communication/EmailServices/write'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

resource appAcsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withAcs) {
  name: guid(communication.id, appPrincipalId, acsEmailSender.id)
  scope: communication
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: acsEmailSender.id
  }
}

resource appTelemetryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles['Monitoring Metrics Publisher'])
  scope: applicationInsights
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Monitoring Metrics Publisher'])
  }
}

// The deploying user's twins: read and clear the queues and tables (Storage Explorer, make
// poison/replay/purge), the large-message bodies (a purge deletes them) and set the SendGrid key
// (Secrets Officer, which can also read it). Not the host's containers: the host keys are there.
resource userStorageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in accountRoles: if (withUser) {
    name: guid(storage.id, userPrincipalId, roles[role])
    scope: storage
    properties: {
      principalId: userPrincipalId
      principalType: userPrincipalType
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles[role])
    }
  }
]

resource userLargeMessageRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUser) {
  name: guid(largeMessageContainer.id, userPrincipalId, roles[blobRole])
  scope: largeMessageContainer
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles[blobRole])
  }
}

resource userSecretsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUser) {
  name: guid(vault.id, userPrincipalId, roles['Key Vault Secrets Officer'])
  scope: vault
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Key Vault Secrets Officer'])
  }
}

resource userTelemetryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUser) {
  name: guid(applicationInsights.id, userPrincipalId, roles['Monitoring Metrics Publisher'])
  scope: applicationInsights
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Monitoring Metrics Publisher'])
  }
}

@description('Names of the roles the app\'s identity holds, on the storage account, its containers, the SendGrid secret and Application Insights.')
output appRoles array = concat(accountRoles, [
  blobRole
  'Key Vault Secrets User'
  'Monitoring Metrics Publisher'
])
