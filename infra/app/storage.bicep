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
@maxValue(100)
@description('Required. The MAX_DELIVERY_ATTEMPTS app setting: with retryMaxDelaySeconds, how long a message can keep retrying.')
param maxDeliveryAttempts int

@minValue(1)
@maxValue(604800)
@description('Required. The RETRY_MAX_DELAY_SECONDS app setting.')
param retryMaxDelaySeconds int

@minValue(8)
@maxValue(3650)
@description('Required. The LARGE_MESSAGE_RETENTION_MARGIN_DAYS app setting: days a body left under live/ is kept beyond the longest retrying; at least the 7 days the Functions host keeps its poison copy of a message, and a day.')
param largeMessageRetentionMarginDays int

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
// once its message is sent or purged. Bodies of messages that may still be alive are under live/,
// those of dead letters under dead-letters/ until an operator replays or purges them, however
// long that takes (shared/blobs.py); older bodies at the container's root are left alone.
resource largeMessageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: largeMessageContainerName
  properties: {
    publicAccess: 'None'
  }
}

// How long a body under live/ may be needed, in whole days rounded up, as the retention timer
// computes it (shared/settings.py large_message_retention): every wait between attempts at its
// longest, plus the margin.
// Parenthesised throughout: pycep (checkov's parser, tests/infra) does not apply precedence.
var liveBodyRetentionDays = max(1, (((maxDeliveryAttempts * retryMaxDelaySeconds) + 86399) / 86400) + largeMessageRetentionMarginDays)

// The backstop behind the retention timer: whatever is left under live/ past that age (the timer
// not running, say) goes. The service runs the policy about once a day, so a blob may outlive
// the rule by a day or two; deleted blobs stay restorable for blobSoftDeleteRetentionDays.
resource lifecyclePolicy 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'delete-leftover-live-message-bodies'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              // Container name first, then the blob name's prefix: live bodies only.
              prefixMatch: [
                '${largeMessageContainer.name}/live/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: liveBodyRetentionDays
                }
              }
            }
          }
        }
      ]
    }
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

@description('Days after its last write that the lifecycle rule deletes a body left under live/.')
output liveBodyRetentionDays int = liveBodyRetentionDays

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
