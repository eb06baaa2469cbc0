// Container Registry for the training image (built from training_job/Dockerfile by
// scripts/build_training_image.sh with `az acr build`, so no local Docker is needed).
// No admin user: the training job pulls with its managed identity (AcrPull, modules/rbac.bicep).

@description('Azure region of the registry.')
param location string

@description('Tags applied to every resource.')
param tags object

@minLength(5)
@maxLength(50)
@description('Name of the registry (alphanumeric).')
param name string

@description('Registry SKU. Basic is the cheapest; Premium adds private endpoints, retention and geo-replication.')
@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param sku string = 'Basic'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
  }
  properties: {
    adminUserEnabled: false
    publicNetworkAccess: 'Enabled'
    zoneRedundancy: 'Disabled'
  }
}

output name string = registry.name
output id string = registry.id
output loginServer string = registry.properties.loginServer
