// Two user-assigned identities, one per workload, so each gets only the roles it needs
// (modules/rbac.bicep): the Function app and the training job.

@description('Azure region of the identities.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name of the Function app identity.')
param functionIdentityName string

@description('Name of the training job identity.')
param jobIdentityName string

resource functionIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: functionIdentityName
  location: location
  tags: tags
}

resource jobIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: jobIdentityName
  location: location
  tags: tags
}

output functionIdentityId string = functionIdentity.id
output functionClientId string = functionIdentity.properties.clientId
output functionPrincipalId string = functionIdentity.properties.principalId
output jobIdentityId string = jobIdentity.id
output jobClientId string = jobIdentity.properties.clientId
output jobPrincipalId string = jobIdentity.properties.principalId
