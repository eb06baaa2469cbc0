// Event Grid system topic on the storage account. Its system-assigned identity writes
// undeliverable events to the dead-letter container (role in modules/rbac.bicep). The
// subscriptions themselves are in event-subscriptions.bicep: they need the deployed functions.

@description('Azure region of the system topic (the storage account region).')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name of the system topic.')
param name string

@description('Name of the storage account whose events the topic publishes.')
param storageAccountName string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output name string = systemTopic.name
output principalId string = systemTopic.identity.principalId
