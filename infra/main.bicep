// visionpipe: the whole pipeline in one subscription-scope deployment (ARCHITECTURE.md, "Cloud").
//
//   azd up                                   (azure.yaml; hooks in scripts/)
//   az deployment sub create -l <region> -f infra/main.bicep -p infra/main.bicepparam
//
// Container, queue, table, function and setting names come from infra/names.json, the mirror of
// visionpipe/names.py (scripts/sync_infra_names.py writes it, tests/test_infra.py checks it).
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd environment name); seeds every resource name.')
param environmentName string

@minLength(1)
@description('Azure region for all resources. GPU jobs need a region with Container Apps serverless GPUs.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Name of the resource group to create; empty for rg-<environmentName>.')
param resourceGroupName string = ''

@description('Object id of a user or group to grant data access to storage (uploads with --auth-mode login); empty for none.')
param principalId string = ''

@description('Principal type of principalId (azd sets AZURE_PRINCIPAL_TYPE: ServicePrincipal when a CI pipeline deploys).')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param principalType string = 'User'

@description('GPU for the training job: T4, A100 (Container Apps serverless GPU, needs quota) or none (CPU only).')
@allowed([
  'T4'
  'A100'
  'none'
])
param gpu string = 'T4'

@description('Training image (registry/repository:tag); empty for a placeholder until scripts/build_training_image.sh has pushed one.')
param trainingImage string = ''

@minValue(300)
@maxValue(86400)
@description('Longest a training execution may run, in seconds (Container Apps Job replicaTimeout).')
param trainingTimeoutSeconds int = 7200

@minValue(0)
@maxValue(10)
@description('How often Container Apps retries a failed training replica (replicaRetryLimit).')
param trainingRetryLimit int = 1

@minValue(1)
@maxValue(100)
@description('Most training executions that may run at the same time (one per queued request).')
param trainingMaxExecutions int = 1

@minValue(40)
@maxValue(1000)
@description('Most Function app instances Flex Consumption may scale out to.')
param functionMaximumInstanceCount int = 40

@description('Memory of one Function app instance, in MB.')
@allowed([
  512
  2048
  4096
])
param functionInstanceMemoryMB int = 2048

@description('Storage account replication.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_LRS'

@minValue(1)
@maxValue(365)
@description('Days a deleted blob or container can be restored (blob soft delete).')
param blobSoftDeleteDays int = 7

@minValue(30)
@maxValue(730)
@description('Log Analytics retention, in days.')
param logRetentionDays int = 30

@secure()
@minLength(32)
@description('Training-Key of the HTTP API (the training-key secret). Generated once per environment by scripts/preprovision.sh (azd) or scripts/generate_keys.sh; never written in the repository.')
param trainingKey string

@secure()
@minLength(32)
@description('Prediction-Key of the HTTP API (the prediction-key secret). Generated like trainingKey.')
param predictionKey string

@description('Create the Event Grid subscriptions. Only once the function code is deployed (scripts/postdeploy.sh does it for azd).')
param deployEventSubscriptions bool = false

@description('AUTO_CREATE_PROJECTS: a drop into an unknown project name creates the project.')
param autoCreateProjects bool = true

@description('UPSCALE_SMALL_IMAGES: upscale images smaller than MIN_IMAGE_SIDE instead of rejecting them.')
param upscaleSmallImages bool = false

@minValue(1)
@description('MAX_TRAINING_IMAGE_BYTES: largest accepted training image.')
param maxTrainingImageBytes int = 6291456

@minValue(1)
@description('MAX_PREDICTION_IMAGE_BYTES: largest accepted prediction image.')
param maxPredictionImageBytes int = 4194304

@minValue(1)
@description('MIN_IMAGE_SIDE: smallest accepted width or height, in pixels.')
param minImageSide int = 256

@minValue(1)
@description('MAX_IMAGE_PIXELS: most pixels an image may decode to (decompression-bomb guard).')
param maxImagePixels int = 64000000

@minValue(1)
@description('PREDICTION_IMAGE_RETENTION_DAYS: days the picture of a stored prediction is kept (the storage lifecycle rule and the app setting both read this).')
param predictionImageRetentionDays int = 30

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'visionpipe'
}
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'
var trainingRepository = 'visionpipe-training'
// Runs nothing of ours: it only stands in until the first training image is pushed.
var placeholderImage = 'mcr.microsoft.com/k8se/quickstart-jobs:latest'

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identities 'modules/identity.bicep' = {
  name: 'identities'
  scope: rg
  params: {
    location: location
    tags: tags
    functionIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}func-${resourceToken}'
    jobIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}job-${resourceToken}'
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    retentionInDays: logRetentionDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    sku: storageSku
    deploymentContainerName: deploymentContainerName
    blobSoftDeleteDays: blobSoftDeleteDays
    predictionImageRetentionDays: predictionImageRetentionDays
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    trainingKey: trainingKey
    predictionKey: predictionKey
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.containerRegistryRegistries}${resourceToken}'
  }
}

module eventGrid 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.eventGridSystemTopics}${resourceToken}'
    storageAccountName: storage.outputs.name
  }
}

module eventGridTopic 'modules/eventgrid-topic.bicep' = {
  name: 'eventgrid-topic'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.eventGridTopics}${resourceToken}'
    publisherPrincipalId: identities.outputs.functionPrincipalId
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    registryName: registry.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    functionPrincipalId: identities.outputs.functionPrincipalId
    jobPrincipalId: identities.outputs.jobPrincipalId
    eventGridPrincipalId: eventGrid.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  dependsOn: [
    rbac
  ]
  params: {
    location: location
    tags: tags
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    identityId: identities.outputs.functionIdentityId
    identityClientId: identities.outputs.functionClientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    keyVaultUri: keyVault.outputs.uri
    trainingKeyUri: keyVault.outputs.trainingKeyUri
    predictionKeyUri: keyVault.outputs.predictionKeyUri
    maximumInstanceCount: functionMaximumInstanceCount
    instanceMemoryMB: functionInstanceMemoryMB
    autoCreateProjects: autoCreateProjects
    upscaleSmallImages: upscaleSmallImages
    maxTrainingImageBytes: maxTrainingImageBytes
    maxPredictionImageBytes: maxPredictionImageBytes
    minImageSide: minImageSide
    maxImagePixels: maxImagePixels
    eventGridTopicEndpoint: eventGridTopic.outputs.endpoint
    predictionImageRetentionDays: predictionImageRetentionDays
  }
}

module containerApps 'modules/containerapps.bicep' = {
  name: 'containerapps'
  scope: rg
  dependsOn: [
    rbac
  ]
  params: {
    location: location
    tags: tags
    environmentName: '${abbrs.appManagedEnvironments}${resourceToken}'
    jobName: '${abbrs.appJobs}train-${resourceToken}'
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    gpu: gpu
    identityId: identities.outputs.jobIdentityId
    identityClientId: identities.outputs.jobClientId
    registryLoginServer: registry.outputs.loginServer
    image: !empty(trainingImage) ? trainingImage : placeholderImage
    storageAccountName: storage.outputs.name
    keyVaultUri: keyVault.outputs.uri
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    replicaTimeout: trainingTimeoutSeconds
    replicaRetryLimit: trainingRetryLimit
    maxExecutions: trainingMaxExecutions
  }
}

// Second phase: an AzureFunction endpoint is validated against the deployed function, so the
// subscriptions can only be created after the code is deployed (see the README, "Deploy to Azure").
module eventSubscriptions 'modules/event-subscriptions.bicep' = if (deployEventSubscriptions) {
  name: 'event-subscriptions'
  scope: rg
  params: {
    systemTopicName: eventGrid.outputs.name
    functionAppName: functionApp.outputs.name
    storageAccountName: storage.outputs.name
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs (azd writes them into the environment; the hook scripts read them)
// ---------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output VISIONPIPE_ENDPOINT string = functionApp.outputs.uri
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri
output AZURE_CONTAINER_REGISTRY_NAME string = registry.outputs.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output AZURE_CONTAINER_APPS_ENVIRONMENT_NAME string = containerApps.outputs.environmentName
output TRAINING_JOB_NAME string = containerApps.outputs.jobName
output TRAINING_IMAGE_REPOSITORY string = '${registry.outputs.loginServer}/${trainingRepository}'
output TRAINING_GPU string = gpu
output EVENT_GRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.name
output EVENT_GRID_TOPIC_NAME string = eventGridTopic.outputs.name
output EVENT_GRID_TOPIC_ENDPOINT string = eventGridTopic.outputs.endpoint
output EVENT_SUBSCRIPTIONS_DEPLOYED bool = deployEventSubscriptions
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
