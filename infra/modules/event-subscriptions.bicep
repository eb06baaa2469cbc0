// One Event Grid subscription per drop container (names.EVENT_SUBSCRIPTIONS: container ->
// function), delivering Microsoft.Storage.BlobCreated to the Event Grid trigger function.
//
// An AzureFunction endpoint is validated against the deployed function, so this module runs
// only after the code is deployed: scripts/postdeploy.sh deploys it on its own (resource group
// scope), and infra/main.bicep includes it when deployEventSubscriptions is true.

var names = loadJsonContent('../names.json')

// Retry and time-to-live of ARCHITECTURE.md, "Cloud"; undeliverable events go to the dead-letter container.
var maxDeliveryAttempts = 30
var eventTimeToLiveInMinutes = 1440

@description('Name of the Event Grid system topic on the storage account.')
param systemTopicName string

@description('Name of the Function app that hosts the Event Grid trigger functions.')
param functionAppName string

@description('Name of the storage account (the event source and the dead-letter destination).')
param storageAccountName string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource subscriptions 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = [for sub in items(names.EVENT_SUBSCRIPTIONS): {
  parent: systemTopic
  name: '${sub.key}-blob-created'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionApp.id}/functions/${sub.value}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        names.BLOB_CREATED
      ]
      subjectBeginsWith: '/blobServices/default/containers/${sub.key}/blobs/'
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.api'
          values: names.BLOB_CREATED_APIS
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: storage.id
          blobContainerName: names.DEADLETTER
        }
      }
    }
  }
}]

output subscriptionNames array = [for sub in items(names.EVENT_SUBSCRIPTIONS): '${systemTopic.name}/${sub.key}-blob-created']
