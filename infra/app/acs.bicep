// Azure Communication Services Email for the acs provider (docs/providers.md): an Email
// Communication Service with its Azure-managed domain (DoNotReply@<guid>.azurecomm.net, no DNS to
// set up), connected to a Communication Services resource whose endpoint the app calls with its
// identity. Shapes from Azure/azure-rest-api-specs, specification/communication/resource-manager/
// Microsoft.Communication/stable/2023-04-01 (CommunicationServices.json, Domains.json).

@description('Required. Name of the Communication Services resource; it is also the endpoint\'s host name, so it is unique across Azure.')
param communicationServiceName string

@description('Required. Name of the Email Communication Service.')
param emailServiceName string

@description('Required. Where both resources keep their data at rest, for example \'United States\' or \'Europe\'; a domain connects only to a resource of the same data location.')
param dataLocation string

@description('Optional. Tags for the resources.')
param tags object = {}

@description('Required. Log Analytics workspace that receives the send and delivery-status logs.')
param logAnalyticsWorkspaceId string

resource emailService 'Microsoft.Communication/emailServices@2023-04-01' = {
  name: emailServiceName
  // Communication resources are global; dataLocation says where their data stays.
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
  }
}

// An Azure-managed domain must be named AzureManagedDomain. Engagement tracking stays off: it
// would rewrite links and add a tracking pixel to every mail, which no client asked for.
resource managedDomain 'Microsoft.Communication/emailServices/domains@2023-04-01' = {
  parent: emailService
  name: 'AzureManagedDomain'
  location: 'global'
  tags: tags
  properties: {
    domainManagement: 'AzureManaged'
    userEngagementTracking: 'Disabled'
  }
}

resource communication 'Microsoft.Communication/communicationServices@2023-04-01' = {
  name: communicationServiceName
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
    linkedDomains: [
      managedDomain.id
    ]
  }
}

// What ACS did with each mail after it took it (sent, bounced, suppressed), by operation id:
// the status record's provider_message_id (tables ACSEmailSendMailOperational and
// ACSEmailStatusUpdateOperational).
resource emailDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'email-to-log-analytics'
  scope: communication
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'EmailSendMailOperational'
        enabled: true
      }
      {
        category: 'EmailStatusUpdateOperational'
        enabled: true
      }
    ]
  }
}

@description('Name of the Communication Services resource.')
output name string = communication.name

@description('The ACS_EMAIL_ENDPOINT app setting: the resource\'s endpoint.')
output endpoint string = 'https://${communication.properties.hostName}'

@description('Domain of the Azure-managed sender addresses (DoNotReply@ this domain).')
output senderDomain string = managedDomain.properties.mailFromSenderDomain
