"""Names that are a contract with the infrastructure (docs/ARCHITECTURE.md,
"Storage layout (one storage account)", and docs/ARCHITECTURE.md,
"Cloud (infra/, Bicep, azd-compatible)").

Containers, queues, tables, function names and setting names are written here once. The Bicep in
``infra/`` and the tests read them from here, so a rename that misses one side fails a test.
"""

from __future__ import annotations

# Blob containers
TRAINING_IMAGES = "training-images"
PREDICT_IMAGES = "predict-images"
PREDICTIONS = "predictions"
QUARANTINE = "quarantine"
MODELS = "models"
DATASETS = "datasets"
DEADLETTER = "deadletter"
# The pictures of stored predictions (HTTP prediction, quick test, drop folder) and their
# thumbnails, kept PREDICTION_IMAGE_RETENTION_DAYS (a lifecycle rule deletes them in Azure).
PREDICTION_IMAGES = "prediction-images"
CONTAINERS: tuple[str, ...] = (
    TRAINING_IMAGES,
    PREDICT_IMAGES,
    PREDICTIONS,
    QUARANTINE,
    MODELS,
    DATASETS,
    DEADLETTER,
    PREDICTION_IMAGES,
)
DROP_CONTAINERS: tuple[str, ...] = (TRAINING_IMAGES, PREDICT_IMAGES)

# Queues; the runtime adds "-poison" to a queue whose messages keep failing.
TRAINING_REQUESTS = "training-requests"
TRAINING_EVENTS = "training-events"
# Export conversions (platforms other than plain ONNX) for the training job's export worker.
EXPORT_REQUESTS = "export-requests"
POISON_SUFFIX = "-poison"
QUEUES: tuple[str, ...] = (
    TRAINING_REQUESTS,
    TRAINING_REQUESTS + POISON_SUFFIX,
    TRAINING_EVENTS,
    TRAINING_EVENTS + POISON_SUFFIX,
    EXPORT_REQUESTS,
    EXPORT_REQUESTS + POISON_SUFFIX,
)

# Tables
PROJECTS_TABLE = "projects"
TAGS_TABLE = "tags"
IMAGES_TABLE = "images"
ITERATIONS_TABLE = "iterations"
PREDICTIONS_TABLE = "predictions"
# One row per requested export: PartitionKey projectId, RowKey "{iterationId}|{platform}|{flavor}".
EXPORTS_TABLE = "exports"
# Detection drop folder: one row per (image, annotation) pair whose halves arrive as separate
# blob events (visionpipe.stores.annotation_pairs): PartitionKey projectId, RowKey a hash.
ANNOTATION_PAIRS_TABLE = "annotationpairs"
TABLES: tuple[str, ...] = (
    PROJECTS_TABLE,
    TAGS_TABLE,
    IMAGES_TABLE,
    ITERATIONS_TABLE,
    PREDICTIONS_TABLE,
    EXPORTS_TABLE,
    ANNOTATION_PAIRS_TABLE,
)
# Lifecycle events (visionpipe.pipeline.lifecycle_events) when no Event Grid topic is set: the
# local stand-in for the topic, read by `visionpipe events` and the tests. Not in TABLES: Azure
# sends to the topic and never needs it; it is created on first use. Like the topic's deliveries,
# it is a log: deleting a project does not recall the events already sent about it.
LIFECYCLE_EVENTS_TABLE = "lifecycleevents"
# A project export's snapshot (export_project): DATASETS/{projectId}/{PROJECT_COPY_FOLDER}/...,
# the manifest of each export, the image bytes by content hash and the import claims; deleted
# with the project.
PROJECT_COPY_FOLDER = "project-copies"

# Function names: Event Grid subscriptions point at these (AzureFunction endpoint / webhook
# `functionName=`), so they are part of the infra contract too.
INGEST_FUNCTION = "ingest_training_image"
PREDICT_FUNCTION = "predict_image"
TRAINING_EVENTS_FUNCTION = "on_training_event"
HEALTH_FUNCTION = "health"

# Which function receives BlobCreated events of which drop container. The Event Grid bridge and the
# Bicep event subscriptions are both built from this map.
EVENT_SUBSCRIPTIONS: dict[str, str] = {
    TRAINING_IMAGES: INGEST_FUNCTION,
    PREDICT_IMAGES: PREDICT_FUNCTION,
}

# Event Grid: the only event type and the only `data.api` values that mean "a whole blob arrived".
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
BLOB_CREATED_APIS: tuple[str, ...] = ("PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose")

# App settings (Function app settings in Azure, `local.settings.json` locally).
# The storage connection: a connection string (Azurite), or identity-based in Azure via
# `VISIONPIPE_STORAGE__accountName` (+ `__credential`, `__clientId`). Triggers bind to it by name.
STORAGE_CONNECTION = "VISIONPIPE_STORAGE"
SETTING_TRAINING_KEY = "TRAINING_KEY"
SETTING_PREDICTION_KEY = "PREDICTION_KEY"
SETTING_KEY_VAULT_URI = "KEY_VAULT_URI"
# Key Vault secret names behind the TRAINING_KEY / PREDICTION_KEY Key Vault references.
TRAINING_KEY_SECRET = "training-key"
PREDICTION_KEY_SECRET = "prediction-key"
# With KEY_VAULT_URI set, the keys are read from Key Vault and cached this long; a rotated-out
# key keeps working for the grace period (visionpipe.api.auth).
SETTING_KEY_CACHE_TTL_SECONDS = "KEY_CACHE_TTL_SECONDS"
SETTING_KEY_ROTATION_GRACE_SECONDS = "KEY_ROTATION_GRACE_SECONDS"
# Lifecycle events go to this Event Grid custom topic (managed identity) when set, else to
# LIFECYCLE_EVENTS_TABLE.
SETTING_EVENT_GRID_TOPIC_ENDPOINT = "EVENT_GRID_TOPIC_ENDPOINT"
# Locally (no topic): webhook URLs (comma-separated) the local stack delivers the lifecycle
# CloudEvents to, as an Event Grid webhook subscription would (visionpipe.local.webhooks); the
# first retry's delay in seconds (doubling after) and the attempts before an event is dropped.
SETTING_LOCAL_EVENT_WEBHOOKS = "LOCAL_EVENT_WEBHOOKS"
SETTING_LOCAL_WEBHOOK_RETRY_SECONDS = "LOCAL_WEBHOOK_RETRY_SECONDS"
SETTING_LOCAL_WEBHOOK_MAX_ATTEMPTS = "LOCAL_WEBHOOK_MAX_ATTEMPTS"
# Project copy (export_project / import_project): the HMAC key of the import tokens (default:
# derived from TRAINING_KEY) and how long a token stays valid.
SETTING_PROJECT_COPY_SIGNING_KEY = "PROJECT_COPY_SIGNING_KEY"
SETTING_PROJECT_COPY_TOKEN_TTL_SECONDS = "PROJECT_COPY_TOKEN_TTL_SECONDS"
SETTING_AUTO_CREATE_PROJECTS = "AUTO_CREATE_PROJECTS"
# "true": a detection drop-folder prediction also writes a JPEG with its boxes drawn.
SETTING_DROP_PREDICT_ANNOTATED_IMAGES = "DROP_PREDICT_ANNOTATED_IMAGES"
SETTING_UPSCALE_SMALL_IMAGES = "UPSCALE_SMALL_IMAGES"
SETTING_MAX_TRAINING_IMAGE_BYTES = "MAX_TRAINING_IMAGE_BYTES"
SETTING_MAX_PREDICTION_IMAGE_BYTES = "MAX_PREDICTION_IMAGE_BYTES"
SETTING_MIN_IMAGE_SIDE = "MIN_IMAGE_SIDE"
SETTING_MAX_IMAGE_PIXELS = "MAX_IMAGE_PIXELS"
# Binding-expression names of the queues, so the Bicep can point a trigger elsewhere without code.
SETTING_TRAINING_REQUESTS_QUEUE = "TRAINING_REQUESTS_QUEUE"
SETTING_TRAINING_EVENTS_QUEUE = "TRAINING_EVENTS_QUEUE"

# Optional settings: the code's defaults apply when they are absent, so the Bicep need not set them.
SETTING_URL_FETCH_ALLOWED_NETWORKS = "URL_FETCH_ALLOWED_NETWORKS"
SETTING_EXPORT_LINK_TTL_SECONDS = "EXPORT_LINK_TTL_SECONDS"
# The whole-fetch time limit of URL uploads and quick tests (headers and body), in seconds.
SETTING_URL_FETCH_TIMEOUT_SECONDS = "URL_FETCH_TIMEOUT_SECONDS"
# The app's public address (https://host) for links it hands out; the request's Host when unset.
SETTING_PUBLIC_BASE_URL = "PUBLIC_BASE_URL"
# Every storage client's bounded retries and timeouts (visionpipe.storage), so that an outage is
# answered in seconds (503), not after minutes of the SDK's default retries.
SETTING_STORAGE_RETRY_TOTAL = "STORAGE_RETRY_TOTAL"
SETTING_STORAGE_RETRY_BACKOFF_SECONDS = "STORAGE_RETRY_BACKOFF_SECONDS"
SETTING_STORAGE_CONNECT_TIMEOUT_SECONDS = "STORAGE_CONNECT_TIMEOUT_SECONDS"
SETTING_STORAGE_READ_TIMEOUT_SECONDS = "STORAGE_READ_TIMEOUT_SECONDS"
SETTING_HEALTH_TIMEOUT_SECONDS = "HEALTH_TIMEOUT_SECONDS"
# Days the picture of a stored prediction is kept (the Bicep's lifecycle rule uses the same number).
SETTING_PREDICTION_IMAGE_RETENTION_DAYS = "PREDICTION_IMAGE_RETENTION_DAYS"
# The training-events function publishes a better iteration by itself when this is on.
SETTING_AUTO_PUBLISH = "AUTO_PUBLISH"
SETTING_AUTO_PUBLISH_NAME = "AUTO_PUBLISH_NAME"
# Serving tuning knobs (visionpipe.settings.ServingConfig).
SETTING_SERVING_RUNS = "SERVING_CONCURRENT_RUNS"
SETTING_SERVING_THREADS = "SERVING_INTRA_OP_THREADS"
SETTING_SERVING_MAX_BATCH = "SERVING_MAX_BATCH"
SETTING_SERVING_POINTER_MAX_AGE = "SERVING_POINTER_MAX_AGE_SECONDS"
# Image decoding bounds (memory): the prediction pixel budget and the process-wide decode slots.
SETTING_PREDICTION_MAX_PIXELS = "PREDICTION_MAX_PIXELS"
SETTING_DECODE_CONCURRENCY = "DECODE_CONCURRENCY"

# The training job's container command (training_job/Dockerfile ENTRYPOINT + Container Apps Job).
TRAINING_JOB_MODULE = "training_job"
# The export job's command (same image, a second Container Apps Job on export-requests).
EXPORT_WORKER_MODULE = "training_job.export_worker"

APP_SETTINGS: tuple[str, ...] = (
    SETTING_TRAINING_KEY,
    SETTING_PREDICTION_KEY,
    SETTING_AUTO_CREATE_PROJECTS,
    SETTING_UPSCALE_SMALL_IMAGES,
    SETTING_MAX_TRAINING_IMAGE_BYTES,
    SETTING_MAX_PREDICTION_IMAGE_BYTES,
    SETTING_MIN_IMAGE_SIDE,
    SETTING_MAX_IMAGE_PIXELS,
    SETTING_PUBLIC_BASE_URL,
)
