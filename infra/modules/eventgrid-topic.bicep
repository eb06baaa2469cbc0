// Event Grid custom topic for visionpipe's lifecycle events (visionpipe/pipeline/lifecycle_events.py):
// Visionpipe.ImageQuarantined, IterationCompleted, IterationFailed, IterationPublished and
// ExportCompleted, as CloudEvents 1.0. The Function app publishes with its managed identity
// (role EventGrid Data Sender on this topic only); access keys are off. Subscribers (a Logic App,
// a webhook, a Function) are added by the operator: see the README, "Lifecycle events".

@description('Azure region of the topic.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name of the custom topic.')
param name string

@description('Principal id of the identity that publishes (the Function app).')
param publisherPrincipalId string

// EventGrid Data Sender (built-in role).
var eventGridDataSender = 'd5a91429-5739-47e2-a06b-3470a27159e7'

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    // Entra ID only: no shared access keys or SAS tokens to leak or rotate.
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource sender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, publisherPrincipalId, subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSender))
  scope: topic
  properties: {
    principalId: publisherPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSender)
  }
}

output name string = topic.name
output id string = topic.id
output endpoint string = topic.properties.endpoint
