// Parameters for infra/main.bicep, read from the environment so that azd (which exports its
// environment values) and a plain `az deployment sub create` use the same file.
using './main.bicep'

param environmentName = readEnvironmentVariable('AZURE_ENV_NAME', 'visionpipe')
param location = readEnvironmentVariable('AZURE_LOCATION', 'swedencentral')
param principalId = readEnvironmentVariable('AZURE_PRINCIPAL_ID', '')
// User for a person; ServicePrincipal when a pipeline deploys (azd sets it from its login).
param principalType = readEnvironmentVariable('AZURE_PRINCIPAL_TYPE', 'User')
param gpu = readEnvironmentVariable('VISIONPIPE_GPU', 'T4')
param trainingImage = readEnvironmentVariable('VISIONPIPE_TRAINING_IMAGE', '')
// The API keys have no default: scripts/generate_keys.sh makes them (azd runs it before provisioning).
param trainingKey = readEnvironmentVariable('VISIONPIPE_TRAINING_KEY')
param predictionKey = readEnvironmentVariable('VISIONPIPE_PREDICTION_KEY')
param deployEventSubscriptions = bool(readEnvironmentVariable('VISIONPIPE_DEPLOY_EVENT_SUBSCRIPTIONS', 'false'))
