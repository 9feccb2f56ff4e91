// Key Vault with RBAC authorization, soft delete and purge protection. It holds the SendGrid
// API key, which the app reads through a Key Vault reference with its own identity.

@minLength(3)
@maxLength(24)
@description('Required. Key Vault name.')
param name string

@description('Required. Azure region.')
param location string

@description('Optional. Tags for the vault.')
param tags object = {}

@minValue(7)
@maxValue(90)
@description('Optional. Days a deleted vault or secret can be recovered (and its name stays reserved).')
param softDeleteRetentionInDays int = 90

@secure()
@description('Optional. SendGrid API key. Empty: the secret gets no version now and the operator sets it later.')
param sendgridApiKey string = ''

@description('Optional. Name of the secret that holds the SendGrid API key.')
param sendgridApiKeySecretName string = 'sendgrid-api-key'

@secure()
@description('Optional. The SMTP relay\'s password (the smtp provider). Empty: the secret gets no version now.')
param smtpPassword string = ''

@description('Optional. Name of the secret that holds the SMTP relay\'s password.')
param smtpPasswordSecretName string = 'smtp-password'

@description('Required. Log Analytics workspace that receives the vault\'s audit events: every read of the SendGrid key, by whom.')
param logAnalyticsWorkspaceId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    // App Service resolves Key Vault references over the vault's public endpoint unless the app
    // is VNet-integrated; access is still by Entra ID and RBAC only.
    // checkov:skip=CKV_AZURE_109: no VNet integration yet; Key Vault references need the public endpoint
    // checkov:skip=CKV_AZURE_189: no VNet integration yet; Key Vault references need the public endpoint
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// AuditEvent: every operation on the vault and its secrets, with the caller's identity and
// address: who read the SendGrid key (the app's identity resolving its reference, or a person).
resource auditDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

module sendgridSecret 'secret.bicep' = if (!empty(sendgridApiKey)) {
  name: 'sendgrid-api-key-secret'
  params: {
    vaultName: vault.name
    name: sendgridApiKeySecretName
    value: sendgridApiKey
  }
}

module smtpSecret 'secret.bicep' = if (!empty(smtpPassword)) {
  name: 'smtp-password-secret'
  params: {
    vaultName: vault.name
    name: smtpPasswordSecretName
    value: smtpPassword
  }
}

@description('Name of the vault.')
output name string = vault.name

@description('Name of the SendGrid API key secret.')
output sendgridApiKeySecretName string = sendgridApiKeySecretName

@description('Versionless URI of the SendGrid API key secret, for the Key Vault reference (picks up new versions).')
output sendgridApiKeySecretUri string = '${vault.properties.vaultUri}secrets/${sendgridApiKeySecretName}'

@description('Name of the SMTP relay password secret.')
output smtpPasswordSecretName string = smtpPasswordSecretName

@description('Versionless URI of the SMTP relay password secret, for the Key Vault reference.')
output smtpPasswordSecretUri string = '${vault.properties.vaultUri}secrets/${smtpPasswordSecretName}'
