// Key Vault for the two API keys (ARCHITECTURE.md, "HTTP API"). RBAC authorization only (no access policies),
// soft delete and purge protection on. The keys arrive as secure parameters, generated once per
// environment (scripts/generate_keys.sh, run by the azd preprovision hook); none is ever written
// in the repository.

@description('Azure region of the vault.')
param location string

@description('Tags applied to every resource.')
param tags object

@minLength(3)
@maxLength(24)
@description('Name of the Key Vault.')
param name string

@secure()
@description('Value of the training-key secret (the Training-Key header).')
param trainingKey string

@secure()
@description('Value of the prediction-key secret (the Prediction-Key header).')
param predictionKey string

@description('Resource id of the Log Analytics workspace that receives the vault audit log.')
param logAnalyticsWorkspaceId string

@minValue(7)
@maxValue(90)
@description('Days a deleted vault or secret stays recoverable (purge protection keeps the name reserved as long).')
param softDeleteRetentionInDays int = 7

// The secret names the app and the job read (ARCHITECTURE.md, "HTTP API"), from the names contract.
var names = loadJsonContent('../names.json')
var trainingKeySecretName = names.TRAINING_KEY_SECRET
var predictionKeySecretName = names.PREDICTION_KEY_SECRET

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109:No VNet in the default deployment: Flex Consumption resolves Key Vault references over the public endpoint and App Service is not a trusted service for the firewall bypass; access needs an Entra ID token and the Key Vault Secrets User role.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource trainingKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  //checkov:skip=CKV_AZURE_41:An API key that expires would silently lock every client out; rotate with scripts/generate_keys.sh --rotate and a redeployment instead.
  parent: vault
  name: trainingKeySecretName
  properties: {
    value: trainingKey
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource predictionKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  //checkov:skip=CKV_AZURE_41:An API key that expires would silently lock every client out; rotate with scripts/generate_keys.sh --rotate and a redeployment instead.
  parent: vault
  name: predictionKeySecretName
  properties: {
    value: predictionKey
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource auditLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
// Versionless URIs: a Key Vault reference then always resolves the latest version.
output trainingKeyUri string = trainingKeySecret.properties.secretUri
output predictionKeyUri string = predictionKeySecret.properties.secretUri
