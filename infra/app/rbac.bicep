// Every role assignment, in one place. Each is named guid(scope, principal, role), so a
// redeployment finds the same assignment instead of adding a second one.

@description('Required. Storage account the app uses.')
param storageAccountName string

@description('Required. Key Vault that holds the SendGrid key.')
param keyVaultName string

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
  'Storage Blob Data Owner': 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  'Storage Queue Data Contributor': '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  'Storage Table Data Contributor': '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

// Storage Queue Data Contributor rather than Reader + Message Processor: the host must release
// failed messages and create and write the poison queue. Blob Data Owner: host storage, the
// deployment package and the bodies of large messages (claim-check), all in this account, so
// no container-scoped blob role is added for them. Table Data Contributor: status records.
var storageRoles = [
  'Storage Blob Data Owner'
  'Storage Queue Data Contributor'
  'Storage Table Data Contributor'
]
var withUser = !empty(userPrincipalId)

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource appStorageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in storageRoles: {
    name: guid(storage.id, appPrincipalId, roles[role])
    scope: storage
    properties: {
      principalId: appPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles[role])
    }
  }
]

resource appSecretsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, roles['Key Vault Secrets User'])
  scope: vault
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Key Vault Secrets User'])
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
// poison/replay/purge) and set the SendGrid key (Secrets Officer, which can also read it).
resource userStorageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in storageRoles: if (withUser) {
    name: guid(storage.id, userPrincipalId, roles[role])
    scope: storage
    properties: {
      principalId: userPrincipalId
      principalType: userPrincipalType
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles[role])
    }
  }
]

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

@description('Names of the roles the app\'s identity holds.')
output appRoles array = concat(storageRoles, [
  'Key Vault Secrets User'
  'Monitoring Metrics Publisher'
])
