// The app's storage account: host storage, the Flex deployment container and the container for
// large message bodies (blob), the mail queue and its poison queue, the status table. Shared keys
// are off: every caller signs in with Entra ID (the app with its identity, operators with their
// own account). Every container the app uses is created here, the Functions host's own included,
// so that the app's blob role can be granted on those containers alone (rbac.bicep). The services
// and containers are top-level resources with `parent:`: pycep (checkov's parser) keeps only the
// last child nested in a resource, and would not see the others.

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

@description('Required. Log Analytics workspace that receives the storage services\' resource logs: the queue service\'s writes and deletes (the dead-letter alert reads them), and every read, write and delete of the blob and table services.')
param logAnalyticsWorkspaceId string

@minValue(1)
@maxValue(365)
@description('Optional. Days a deleted or overwritten blob (and a deleted container) can be restored. Mail bodies the gateway deletes after sending stay recoverable, to whoever may read the container, this long.')
param blobSoftDeleteRetentionDays int = 7

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
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    // Soft delete: a blob deleted or overwritten by mistake, or by someone who should not have,
    // can be restored for blobSoftDeleteRetentionDays.
    deleteRetentionPolicy: {
      enabled: true
      days: blobSoftDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: blobSoftDeleteRetentionDays
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The Functions host's own containers (Azure/azure-functions-host ScriptConstants
// AzureWebJobsHostsContainerName, BlobStorageSecretsRepository): locks, timer schedules and host
// ids; the host keys. The host creates them when they are missing; here they exist before it
// starts, so it needs no right to create containers in the account.
resource hostsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'azure-webjobs-hosts'
  properties: {
    publicAccess: 'None'
  }
}

resource secretsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'azure-webjobs-secrets'
  properties: {
    publicAccess: 'None'
  }
}

// Mail bodies (addresses, content, attachments) waiting to be sent: the gateway deletes each blob
// once its message is sent or purged. No lifecycle rule: a dead letter keeps its body until an
// operator replays or purges it, however long that takes.
resource largeMessageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: largeMessageContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource mailQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: mailQueueName
}

// The host and the gateway both write dead letters here; created up front so that operators and
// the alert find it before the first failure.
resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: '${mailQueueName}-poison'
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource statusTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: statusTableName
}

resource clientTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: clientTableName
}

// Writes (PutMessage: every dead letter) and deletes (operators clearing messages) go to Log
// Analytics; reads, which include the host's queue polling, are not collected.
resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'queue-writes-to-log-analytics'
  scope: queueService
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

// Every read, write and delete of blobs and tables: who (which identity, from where) read a mail
// body, a status record or a client's row. Reads include the app's own, so these logs grow with
// the mail sent (about one row per storage call).
resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'blob-access-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
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

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'table-access-to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
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
output largeMessageContainerName string = largeMessageContainer.name

@description('Name of the mail queue.')
output mailQueueName string = mailQueue.name

@description('Name of the poison queue.')
output poisonQueueName string = poisonQueue.name

@description('Name of the Flex Consumption deployment container.')
output deploymentContainerName string = deploymentContainer.name

@description('Names of the Functions host\'s own containers (locks, timers and host ids; host keys).')
output hostContainerNames array = [
  hostsContainer.name
  secretsContainer.name
]
