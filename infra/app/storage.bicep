// The app's storage account: host storage, the Flex deployment container and the container for
// large message bodies (blob), the mail queue and its poison queue, the status table. Shared keys
// are off: every caller signs in with Entra ID (the app with its identity, operators with their
// own account).

@minLength(3)
@maxLength(24)
@description('Required. Storage account name: 3-24 lowercase letters and digits.')
param name string

@description('Required. Azure region.')
param location string

@description('Optional. Tags for the account.')
param tags object = {}

@allowed([
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
  'Standard_ZRS'
  'Standard_LRS'
])
@description('Optional. Replication. Geo-redundant by default: accepted mail waits here until it is delivered.')
param skuName string = 'Standard_GRS'

@description('Required. Blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@minLength(3)
@maxLength(56)
@description('Required. Name of the mail queue; the poison queue is <name>-poison.')
param mailQueueName string

@minLength(3)
@maxLength(63)
@description('Required. Name of the delivery status table.')
param statusTableName string

@minLength(3)
@maxLength(63)
@description('Required. Name of the clients table.')
param clientTableName string

@description('Required. Blob container for the bodies of messages too large for one queue message.')
param largeMessageContainerName string

@description('Required. Log Analytics workspace that receives the queue service\'s write and delete logs (the dead-letter alert reads them).')
param logAnalyticsWorkspaceId string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // Without a virtual network the Flex Consumption app reaches storage over its public
    // endpoint; Entra ID is the only way in (shared keys are off).
    // checkov:skip=CKV_AZURE_35: no VNet integration yet; the app needs the public endpoint and shared-key access is disabled
    // checkov:skip=CKV_AZURE_59: no VNet integration yet; the app needs the public endpoint and shared-key access is disabled
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }

  resource blobService 'blobServices' = {
    name: 'default'

    resource deploymentContainer 'containers' = {
      name: deploymentContainerName
      properties: {
        publicAccess: 'None'
      }
    }

    // Mail bodies (addresses, content, attachments) waiting to be sent: the gateway deletes
    // each blob once its message is sent or purged. No lifecycle rule: a dead letter keeps its
    // body until an operator replays or purges it, however long that takes.
    resource largeMessageContainer 'containers' = {
      name: largeMessageContainerName
      properties: {
        publicAccess: 'None'
      }
    }
  }

  resource queueService 'queueServices' = {
    name: 'default'

    resource mailQueue 'queues' = {
      name: mailQueueName
    }

    // The host and the gateway both write dead letters here; created up front so that
    // operators and the alert find it before the first failure.
    resource poisonQueue 'queues' = {
      name: '${mailQueueName}-poison'
    }
  }

  resource tableService 'tableServices' = {
    name: 'default'

    resource statusTable 'tables' = {
      name: statusTableName
    }

    resource clientTable 'tables' = {
      name: clientTableName
    }
  }
}

// Writes (PutMessage: every dead letter) and deletes (operators clearing messages) go to Log
// Analytics; reads, which include the host's queue polling, are not collected.
resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'queue-writes-to-log-analytics'
  scope: storage::queueService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

@description('Name of the storage account.')
output name string = storage.name

@description('Blob endpoint, ending in a slash.')
output blobEndpoint string = storage.properties.primaryEndpoints.blob

@description('Name of the container for large message bodies.')
output largeMessageContainerName string = storage::blobService::largeMessageContainer.name

@description('Name of the mail queue.')
output mailQueueName string = storage::queueService::mailQueue.name

@description('Name of the poison queue.')
output poisonQueueName string = storage::queueService::poisonQueue.name
