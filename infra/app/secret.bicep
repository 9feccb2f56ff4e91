// One Key Vault secret version. A module of its own so that the caller can make it conditional
// (no value, no version) while checkov still scans the secret's properties.

@description('Required. Name of the existing Key Vault.')
param vaultName string

@description('Required. Name of the secret.')
param name string

@secure()
@description('Required. Value of the secret.')
param value string

@description('Optional. Content type recorded with the secret.')
param contentType string = 'text/plain'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: name
  properties: {
    // checkov:skip=CKV_AZURE_41: SendGrid keys do not expire; an expiry date would stop delivery without warning (rotate them as docs/deploy.md says)
    value: value
    contentType: contentType
  }
}

@description('Name of the secret.')
output name string = secret.name
