// Least-privilege role assignments: data-plane roles only, each on the narrowest scope the
// workload uses, each named guid(scope, principalId, roleDefinitionId).
//
//   Function app identity : Storage Blob Data Owner (the Functions host needs Owner for
//                           AzureWebJobsStorage and the deployment container), Queue and Table
//                           Data Contributor, Key Vault Secrets User, Monitoring Metrics Publisher
//   Training job identity : Storage Blob/Queue/Table Data Contributor, AcrPull,
//                           Key Vault Secrets User, Monitoring Metrics Publisher
//   Event Grid topic      : Storage Blob Data Contributor on the dead-letter container only
//   Deploying user        : Storage Blob/Queue/Table Data Contributor, Key Vault Secrets User
//                           (optional: principalId)

var names = loadJsonContent('../names.json')

@description('Name of the storage account.')
param storageAccountName string

@description('Name of the Key Vault.')
param keyVaultName string

@description('Name of the container registry.')
param registryName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Principal id of the Function app identity.')
param functionPrincipalId string

@description('Principal id of the training job identity.')
param jobPrincipalId string

@description('Principal id of the Event Grid system topic identity.')
param eventGridPrincipalId string

@description('Object id of a user or group to grant storage data access; empty for none.')
param userPrincipalId string = ''

@description('Principal type of userPrincipalId: User, or ServicePrincipal when a CI pipeline deploys, or Group.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param userPrincipalType string = 'User'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

var userStorageRoles = [
  roles.storageBlobDataContributor
  roles.storageQueueDataContributor
  roles.storageTableDataContributor
]
var userStorageAssignments = [for role in (empty(userPrincipalId) ? [] : userStorageRoles): {
  principalId: userPrincipalId
  principalType: userPrincipalType
  role: role
}]

var workloadStorageAssignments = [
  {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    role: roles.storageBlobDataOwner
  }
  {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    role: roles.storageQueueDataContributor
  }
  {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    role: roles.storageTableDataContributor
  }
  {
    principalId: jobPrincipalId
    principalType: 'ServicePrincipal'
    role: roles.storageBlobDataContributor
  }
  {
    principalId: jobPrincipalId
    principalType: 'ServicePrincipal'
    role: roles.storageQueueDataContributor
  }
  {
    principalId: jobPrincipalId
    principalType: 'ServicePrincipal'
    role: roles.storageTableDataContributor
  }
]
var storageAssignments = concat(workloadStorageAssignments, userStorageAssignments)

var workloadPrincipalIds = [
  functionPrincipalId
  jobPrincipalId
]

var userPrincipalIds = empty(userPrincipalId) ? [] : [
  userPrincipalId
]

// Who may read the API keys: both workloads, and the deploying user (to hand the keys to clients).
var workloadKeyVaultReaders = [for principalId in workloadPrincipalIds: {
  principalId: principalId
  principalType: 'ServicePrincipal'
}]
var userKeyVaultReaders = [for principalId in userPrincipalIds: {
  principalId: principalId
  principalType: userPrincipalType
}]
var keyVaultReaders = concat(workloadKeyVaultReaders, userKeyVaultReaders)

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource deadletterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: names.DEADLETTER
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource storageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for a in storageAssignments: {
  name: guid(storage.id, a.principalId, subscriptionResourceId('Microsoft.Authorization/roleDefinitions', a.role))
  scope: storage
  properties: {
    principalId: a.principalId
    principalType: a.principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', a.role)
  }
}]

resource keyVaultRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for reader in keyVaultReaders: {
  name: guid(vault.id, reader.principalId, subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser))
  scope: vault
  properties: {
    principalId: reader.principalId
    principalType: reader.principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
  }
}]

resource telemetryRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in workloadPrincipalIds: {
  name: guid(applicationInsights.id, principalId, subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher))
  scope: applicationInsights
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}]

resource jobAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, jobPrincipalId, subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull))
  scope: registry
  properties: {
    principalId: jobPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
  }
}

resource eventGridDeadLetter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadletterContainer.id, eventGridPrincipalId, subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor))
  scope: deadletterContainer
  properties: {
    principalId: eventGridPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}
