// Container Apps environment (serverless GPU workload profile) and the training Job
// (ARCHITECTURE.md, "The flow"): event-triggered by an azure-queue scale rule on training-requests that
// authenticates with the job's managed identity; one message per execution
// (`python -m training_job --once`), zero executions and zero cost while the queue is empty.

var names = loadJsonContent('../names.json')

@description('Azure region of the environment and the job.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name of the Container Apps environment.')
param environmentName string

@maxLength(32)
@description('Name of the training job.')
param jobName string

@description('Resource id of the Log Analytics workspace that receives the console and system logs.')
param logAnalyticsWorkspaceId string

@description('GPU for the training job: T4, A100 or none (CPU on the Consumption profile).')
@allowed([
  'T4'
  'A100'
  'none'
])
param gpu string = 'T4'

@description('Resource id of the user-assigned identity of the job.')
param identityId string

@description('Client id of the user-assigned identity of the job.')
param identityClientId string

@description('Login server of the container registry the image is pulled from.')
param registryLoginServer string

@description('Training image (registry/repository:tag).')
param image string

@description('Name of the storage account that holds the queues, tables and blobs.')
param storageAccountName string

@description('URI of the Key Vault that holds the API keys.')
param keyVaultUri string

@description('Application Insights connection string (not a secret: ingestion needs Entra ID).')
param applicationInsightsConnectionString string

@minValue(300)
@maxValue(86400)
@description('Longest a training execution may run, in seconds.')
param replicaTimeout int = 7200

@minValue(0)
@maxValue(10)
@description('How often a failed replica is retried.')
param replicaRetryLimit int = 1

@minValue(1)
@maxValue(100)
@description('Most executions that may run at the same time.')
param maxExecutions int = 1

@minValue(10)
@maxValue(3600)
@description('How often the scale rule looks at the queue, in seconds.')
param pollingInterval int = 30

// Serverless GPU profiles and the whole-GPU replica size each one offers.
var profiles = {
  T4: {
    workloadProfileType: 'Consumption-GPU-NC8as-T4'
    cpu: 8
    memory: '56Gi'
  }
  A100: {
    workloadProfileType: 'Consumption-GPU-NC24-A100'
    cpu: 24
    memory: '220Gi'
  }
  none: {
    workloadProfileType: 'Consumption'
    cpu: 4
    memory: '8Gi'
  }
}
var useGpu = gpu != 'none'
var workloadProfileName = useGpu ? 'gpu' : 'Consumption'
var consumptionProfile = {
  name: 'Consumption'
  workloadProfileType: 'Consumption'
}
var gpuProfile = {
  name: 'gpu'
  workloadProfileType: profiles[gpu].workloadProfileType
}
var workloadProfiles = useGpu ? [
  consumptionProfile
  gpuProfile
] : [
  consumptionProfile
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

var storagePrefix = names.STORAGE_CONNECTION

resource environment 'Microsoft.App/managedEnvironments@2025-01-01' = {
  name: environmentName
  location: location
  tags: tags
  properties: {
    // Logs go to Log Analytics through the diagnostic setting below: no workspace key needed.
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
    workloadProfiles: workloadProfiles
    zoneRedundant: false
  }
}

resource environmentLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs-to-log-analytics'
  scope: environment
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

resource trainingJob 'Microsoft.App/jobs@2025-01-01' = {
  name: jobName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environment.id
    workloadProfileName: workloadProfileName
    configuration: {
      triggerType: 'Event'
      replicaTimeout: replicaTimeout
      replicaRetryLimit: replicaRetryLimit
      registries: [
        {
          server: registryLoginServer
          identity: identityId
        }
      ]
      eventTriggerConfig: {
        parallelism: 1
        replicaCompletionCount: 1
        scale: {
          minExecutions: 0
          maxExecutions: maxExecutions
          pollingInterval: pollingInterval
          rules: [
            {
              name: names.TRAINING_REQUESTS
              type: 'azure-queue'
              metadata: {
                accountName: storage.name
                queueName: names.TRAINING_REQUESTS
                queueLength: '1'
              }
              identity: identityId
            }
          ]
        }
      }
    }
    template: {
      containers: [
        {
          name: 'training'
          image: image
          command: [
            'python'
            '-m'
            names.TRAINING_JOB_MODULE
          ]
          args: [
            '--once'
          ]
          resources: {
            cpu: profiles[gpu].cpu
            memory: profiles[gpu].memory
          }
          env: [
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
            {
              name: 'AZURE_CLIENT_ID'
              value: identityClientId
            }
            {
              name: names.SETTING_TRAINING_REQUESTS_QUEUE
              value: names.TRAINING_REQUESTS
            }
            {
              name: names.SETTING_TRAINING_EVENTS_QUEUE
              value: names.TRAINING_EVENTS
            }
            // The job answers no HTTP request: it rides out a storage blip (about 30 s) rather
            // than fail an iteration that would then be trained again from the start.
            {
              name: names.SETTING_STORAGE_RETRY_TOTAL
              value: '6'
            }
            {
              name: names.SETTING_STORAGE_RETRY_BACKOFF_SECONDS
              value: '5'
            }
            {
              name: names.SETTING_KEY_VAULT_URI
              value: keyVaultUri
            }
            {
              name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
              value: applicationInsightsConnectionString
            }
            {
              name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
              value: 'ClientId=${identityClientId};Authorization=AAD'
            }
          ]
        }
      ]
    }
  }
}

// The export job: the same image, CPU only (Consumption profile), one export-requests message per
// execution (`python -m training_job.export_worker --once`): conversions and their parity checks.
var exportEnv = [
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
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: applicationInsightsConnectionString
  }
]

resource exportJob 'Microsoft.App/jobs@2025-01-01' = {
  name: '${take(jobName, 25)}-export'
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environment.id
    workloadProfileName: 'Consumption'
    configuration: {
      triggerType: 'Event'
      replicaTimeout: 1800
      replicaRetryLimit: replicaRetryLimit
      registries: [
        {
          server: registryLoginServer
          identity: identityId
        }
      ]
      eventTriggerConfig: {
        parallelism: 1
        replicaCompletionCount: 1
        scale: {
          minExecutions: 0
          maxExecutions: maxExecutions
          pollingInterval: pollingInterval
          rules: [
            {
              name: names.EXPORT_REQUESTS
              type: 'azure-queue'
              metadata: {
                accountName: storage.name
                queueName: names.EXPORT_REQUESTS
                queueLength: '1'
              }
              identity: identityId
            }
          ]
        }
      }
    }
    template: {
      containers: [
        {
          name: 'export'
          image: image
          command: [
            'python'
            '-m'
            names.EXPORT_WORKER_MODULE
          ]
          args: [
            '--once'
          ]
          resources: {
            cpu: 2
            memory: '4Gi'
          }
          env: exportEnv
        }
      ]
    }
  }
}

output environmentName string = environment.name
output jobName string = trainingJob.name
output jobId string = trainingJob.id
output exportJobName string = exportJob.name
