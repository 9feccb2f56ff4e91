// Alerts to one email address:
// - dead letter: any write (PutMessage) to the poison queue, from the queue service's own
//   resource logs in Log Analytics. It catches both the gateway's dead letters and the host's
//   poison moves, within minutes (log ingestion delay included).
// - dead letters waiting: the queue monitor (functions/monitor.py, every 5 minutes) logs a
//   warning, "Poison queue not empty: queue=<name> depth=<n>", while the poison queue holds
//   messages. The alert fires on that warning in Application Insights' traces and resolves
//   once the warnings stop, that is once an operator has replayed or purged the dead letters.
// - not configured: while a setting is wrong (an unresolved Key Vault reference, a missing
//   ALLOWED_SENDERS...) the app answers 503 and keeps mail on the queue; the queue monitor logs
//   an ERROR, "Gateway not configured: <settings>", every 5 minutes. The alert fires on it and
//   resolves once the settings are right.
// - refused keys: the refusal log (shared/refusals.py) writes a warning, "Requests refused:
//   route=<name> status=<code> client=<name or unknown key> address=<ip> count=<n>", for each
//   kind of refusal at once and then at most once a minute with the count since. The alert sums
//   the counts of the 401 lines over 5 minutes and fires above a threshold: keys are being
//   guessed, or an app keeps using a revoked key, or SendGrid's signatures fail.
// - backlog: the storage account's QueueMessageCount above a threshold. Azure reports that
//   count for the whole account only (mail queue and poison queue together; there is no
//   per-queue depth or oldest-message age among the platform metrics), refreshed about hourly.

@description('Required. Name of the action group.')
param actionGroupName string

@minLength(3)
@description('Required. Address the alerts are emailed to.')
param alertEmailAddress string

@description('Required. Storage account that holds the queues.')
param storageAccountName string

@description('Required. Log Analytics workspace with the queue service\'s StorageWrite logs.')
param logAnalyticsWorkspaceId string

@description('Required. Resource id of the Application Insights component that receives the app\'s logs (the queue monitor\'s warning).')
param applicationInsightsId string

@description('Required. Azure region of the log search alerts.')
param location string

@minLength(3)
@maxLength(63)
@description('Required. Name of the poison queue to watch.')
param poisonQueueName string

@minValue(0)
@description('Optional. The backlog alert fires above this many messages in the account\'s queues.')
param queuedMessagesThreshold int = 100

@minValue(1)
@description('Optional. The refused-keys alert fires when more requests than this are refused with 401 in 5 minutes.')
param refusedKeysThreshold int = 50

@description('Optional. Tags for the alert resources.')
param tags object = {}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource queueService 'queueServices' existing = {
    name: 'default'
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'mailgate'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

resource deadLetterAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'mailgate-dead-letter'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'mailgate: message dead-lettered'
    description: 'A message was written to ${poisonQueueName}: the gateway gave up on it or the host moved it there. Read it in Storage Explorer or with make poison.'
    severity: 1
    enabled: true
    scopes: [
      logAnalyticsWorkspaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    // StorageQueueLogs exists only once the first log arrives.
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: 'StorageQueueLogs | where AccountName == "${storageAccountName}" and OperationName == "PutMessage" and Uri contains "/${poisonQueueName}/messages"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// The monitor's cadence (5 minutes) is fixed in functions/monitor.py: a 15-minute window holds
// three of its runs, so one late or lost trace neither delays the alert nor resolves it.
resource deadLettersWaitingAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'mailgate-dead-letters-waiting'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'mailgate: dead letters waiting'
    description: 'The queue monitor found messages in ${poisonQueueName}: dead letters wait for an operator. List them with make poison (or GET /api/v1/dead-letters), then replay or purge them. The alert resolves by itself once the monitor no longer warns.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          // severityLevel 2 is Warning; the text is functions/monitor.py's POISON_WARNING.
          query: 'traces | where severityLevel == 2 and message startswith "Poison queue not empty: queue=${poisonQueueName} "'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    // Stateful: one notification when dead letters start waiting, one when they are gone.
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource notConfiguredAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'mailgate-not-configured'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'mailgate: gateway not configured'
    description: 'A setting of the Function App is wrong or missing (the log names it): every route answers 503 and mail waits on the queue, unsent. Fix the setting (or the Key Vault secret and the identity\'s access to it), then restart the app.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          // severityLevel 3 is Error; the text is shared/gateway.py's NOT_CONFIGURED.
          query: 'traces | where severityLevel == 3 and message startswith "Gateway not configured: "'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// The refusal log writes a kind's count at most a minute late: a 5-minute window still holds it.
resource refusedKeysAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'mailgate-refused-keys'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'mailgate: burst of requests refused with 401'
    description: 'More than ${refusedKeysThreshold} requests were refused with 401 in 5 minutes. The warnings "Requests refused: ... status=401" in traces name the route, the client ("unknown key" for a key no client has) and the caller\'s address: keys being guessed, an app still using a rotated or disabled key, or, on route sendgrid_events, Event Webhook signatures that fail (check SENDGRID_WEBHOOK_PUBLIC_KEY).'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          // severityLevel 2 is Warning; the text is shared/refusals.py's REFUSED line.
          query: 'traces | where severityLevel == 2 and message startswith "Requests refused: " | parse message with * " status=" status:int " client=" * " count=" refused:long | where status == 401'
          timeAggregation: 'Total'
          metricMeasureColumn: 'refused'
          operator: 'GreaterThan'
          threshold: refusedKeysThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource backlogAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'mailgate-queue-backlog'
  location: 'global'
  tags: tags
  properties: {
    description: 'More than ${queuedMessagesThreshold} messages wait in ${storageAccountName}\'s queues (the mail queue and ${poisonQueueName} together): delivery is stalled or dead letters pile up.'
    severity: 2
    enabled: true
    scopes: [
      storage::queueService.id
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          name: 'queued-messages'
          criterionType: 'StaticThresholdCriterion'
          metricNamespace: 'Microsoft.Storage/storageAccounts/queueServices'
          metricName: 'QueueMessageCount'
          timeAggregation: 'Average'
          operator: 'GreaterThan'
          threshold: queuedMessagesThreshold
        }
      ]
    }
    autoMitigate: true
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

@description('Resource id of the action group.')
output actionGroupId string = actionGroup.id
