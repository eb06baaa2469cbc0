// The one storage account (docs/ARCHITECTURE.md, "Storage layout (one storage account)"):
// containers, queues (with their poison queues) and tables, all named in ../names.json (the
// mirror of visionpipe/names.py). Shared-key access is off: every client (Function app, training
// job, Event Grid, the deploying user) uses Entra ID.

var names = loadJsonContent('../names.json')

@description('Azure region of the storage account.')
param location string

@description('Tags applied to every resource.')
param tags object

@minLength(3)
@maxLength(24)
@description('Name of the storage account.')
param name string

@description('Storage account replication.')
param sku string = 'Standard_LRS'

@description('Blob container the Flex Consumption app is deployed from.')
param deploymentContainerName string

@minValue(1)
@maxValue(365)
@description('Days a deleted blob or container can be restored.')
param blobSoftDeleteDays int = 7

@minValue(1)
@maxValue(3650)
@description('Days the picture of a stored prediction is kept in the prediction-images container (the app setting PREDICTION_IMAGE_RETENTION_DAYS should say the same).')
param predictionImageRetentionDays int = 30

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35:No VNet in the default deployment: Flex Consumption, Container Apps and Event Grid reach the account over its public endpoint; shared keys are off, so every request needs an Entra ID token with a data role.
  //checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: the serverless consumers have no private endpoint; access is identity-only (allowSharedKeyAccess false, no public blob access).
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: sku
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: blobSoftDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: blobSoftDeleteDays
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for container in names.CONTAINERS: {
  parent: blobService
  name: container
  properties: {
    publicAccess: 'None'
  }
}]

// Stored predictions keep their picture for predictionImageRetentionDays, then it is deleted (the
// prediction row stays; its image URIs are no longer given).
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'delete-old-prediction-images'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${names.PREDICTION_IMAGES}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterCreationGreaterThan: predictionImageRetentionDays
                }
              }
            }
          }
        }
      ]
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

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queue in names.QUEUES: {
  parent: queueService
  name: queue
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in names.TABLES: {
  parent: tableService
  name: table
}]

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
