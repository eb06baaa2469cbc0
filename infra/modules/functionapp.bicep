// The Function app (ARCHITECTURE.md, "The flow"): Flex Consumption (scales to zero), Python, one user-assigned
// identity for everything — the host storage (AzureWebJobsStorage__*), the app's storage
// connection (VISIONPIPE_STORAGE__*), the deployment container and Key Vault references.
// Setting names come from ../names.json, the mirror of visionpipe/names.py.

var names = loadJsonContent('../names.json')

@description('Azure region of the app and its plan.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name of the Function app.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Resource id of the user-assigned identity of the app.')
param identityId string

@description('Client id of the user-assigned identity of the app.')
param identityClientId string

@description('Name of the storage account (host storage and the app data).')
param storageAccountName string

@description('Blob container the app package is deployed to.')
param deploymentContainerName string

@description('Application Insights connection string (not a secret: ingestion needs Entra ID).')
param applicationInsightsConnectionString string

@description('URI of the Key Vault that holds the API keys.')
param keyVaultUri string

@description('Versionless URI of the training-key secret.')
param trainingKeyUri string

@description('Versionless URI of the prediction-key secret.')
param predictionKeyUri string

@description('Python version of the Flex Consumption runtime.')
@allowed([
  '3.11'
])
param pythonVersion string = '3.11'

@minValue(40)
@maxValue(1000)
@description('Most instances the app may scale out to.')
param maximumInstanceCount int = 40

@description('Memory of one instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('AUTO_CREATE_PROJECTS setting.')
param autoCreateProjects bool = true

@description('UPSCALE_SMALL_IMAGES setting.')
param upscaleSmallImages bool = false

@description('MAX_TRAINING_IMAGE_BYTES setting.')
param maxTrainingImageBytes int = 6291456

@description('MAX_PREDICTION_IMAGE_BYTES setting.')
param maxPredictionImageBytes int = 4194304

@description('MIN_IMAGE_SIDE setting.')
param minImageSide int = 256

@description('MAX_IMAGE_PIXELS setting.')
param maxImagePixels int = 64000000

@description('Lifecycle events topic (modules/eventgrid-topic.bicep); empty: no events sent.')
param eventGridTopicEndpoint string = ''

@minValue(1)
@description('PREDICTION_IMAGE_RETENTION_DAYS: days the picture of a stored prediction is kept (equal to the storage lifecycle rule).')
param predictionImageRetentionDays int = 30

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

var storagePrefix = names.STORAGE_CONNECTION

var appSettings = [
  // The host's own storage, identity-based.
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storage.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  // The app's storage connection: triggers bind to it by name, visionpipe.settings reads it.
  {
    name: '${storagePrefix}__accountName'
    value: storage.name
  }
  {
    name: '${storagePrefix}__credential'
    value: 'managedidentity'
  }
  {
    name: '${storagePrefix}__clientId'
    value: identityClientId
  }
  {
    name: '${storagePrefix}__blobServiceUri'
    value: storage.properties.primaryEndpoints.blob
  }
  {
    name: '${storagePrefix}__queueServiceUri'
    value: storage.properties.primaryEndpoints.queue
  }
  {
    name: '${storagePrefix}__tableServiceUri'
    value: storage.properties.primaryEndpoints.table
  }
  // DefaultAzureCredential picks the user-assigned identity from here.
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: applicationInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
  {
    name: names.SETTING_KEY_VAULT_URI
    value: keyVaultUri
  }
  {
    name: names.SETTING_TRAINING_KEY
    value: '@Microsoft.KeyVault(SecretUri=${trainingKeyUri})'
  }
  {
    name: names.SETTING_PREDICTION_KEY
    value: '@Microsoft.KeyVault(SecretUri=${predictionKeyUri})'
  }
  {
    name: names.SETTING_TRAINING_REQUESTS_QUEUE
    value: names.TRAINING_REQUESTS
  }
  {
    name: names.SETTING_TRAINING_EVENTS_QUEUE
    value: names.TRAINING_EVENTS
  }
  {
    name: names.SETTING_AUTO_CREATE_PROJECTS
    value: autoCreateProjects ? 'true' : 'false'
  }
  {
    name: names.SETTING_UPSCALE_SMALL_IMAGES
    value: upscaleSmallImages ? 'true' : 'false'
  }
  {
    name: names.SETTING_MAX_TRAINING_IMAGE_BYTES
    value: string(maxTrainingImageBytes)
  }
  {
    name: names.SETTING_MAX_PREDICTION_IMAGE_BYTES
    value: string(maxPredictionImageBytes)
  }
  {
    name: names.SETTING_MIN_IMAGE_SIDE
    value: string(minImageSide)
  }
  {
    name: names.SETTING_MAX_IMAGE_PIXELS
    value: string(maxImagePixels)
  }
  // Links the app hands out (export downloadUri, image URIs) use this, never the request's Host.
  // The app's default host name (functionApp.properties.defaultHostName would be a cycle here).
  {
    name: names.SETTING_PUBLIC_BASE_URL
    value: 'https://${name}.azurewebsites.net'
  }
  {
    name: names.SETTING_EVENT_GRID_TOPIC_ENDPOINT
    value: eventGridTopicEndpoint
  }
  {
    name: names.SETTING_PREDICTION_IMAGE_RETENTION_DAYS
    value: string(predictionImageRetentionDays)
  }
]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_17:Clients of the Custom Vision-compatible API authenticate with Training-Key/Prediction-Key headers; requiring client certificates would break the unmodified SDK.
  //checkov:skip=CKV_AZURE_78:Flex Consumption sites reject siteConfig.ftpsState (ARM error 51021 on newer stamps); FTP and FTPS are off through the ftp and scm basicPublishingCredentialsPolicies below (allow: false).
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      // No ftpsState: Flex Consumption rejects it (51021); basicPublishingCredentialsPolicies
      // below turn FTP off instead.
      http20Enabled: true
      appSettings: appSettings
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// No basic-auth (publishing profile) deployments: azd and `func publish` use Entra ID.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output id string = functionApp.id
output uri string = 'https://${functionApp.properties.defaultHostName}'
