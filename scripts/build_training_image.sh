#!/bin/sh
# Build the training image from training_job/Dockerfile in Azure Container Registry (`az acr build`:
# no local Docker), then point the Container Apps Job at it.
#
# Needs: az (logged in), and the deployment outputs in the environment (azd exports them to hooks;
# otherwise: eval "$(scripts/outputs_env.sh)"):
#   AZURE_RESOURCE_GROUP AZURE_CONTAINER_REGISTRY_NAME TRAINING_IMAGE_REPOSITORY TRAINING_JOB_NAME
# Optional: VISIONPIPE_IMAGE_TAG (default: a hash of the sources), VISIONPIPE_BUILD_CONTEXT (default .)
set -eu
cd "$(dirname "$0")/.."

: "${AZURE_RESOURCE_GROUP:?set AZURE_RESOURCE_GROUP (deployment output)}"
: "${AZURE_CONTAINER_REGISTRY_NAME:?set AZURE_CONTAINER_REGISTRY_NAME (deployment output)}"
: "${TRAINING_IMAGE_REPOSITORY:?set TRAINING_IMAGE_REPOSITORY (deployment output)}"
: "${TRAINING_JOB_NAME:?set TRAINING_JOB_NAME (deployment output)}"

dockerfile=training_job/Dockerfile
context="${VISIONPIPE_BUILD_CONTEXT:-.}"
if [ ! -f "$dockerfile" ]; then
    echo "error: $dockerfile not found" >&2
    exit 1
fi
# `az acr build` uploads the whole context: without a .dockerignore that leaves out the virtual
# environment and the azd environment (.azure holds the API keys), it would upload both.
for entry in .venv .azure; do
    if ! grep -qsE "^/?$entry/?\$" "$context/.dockerignore"; then
        echo "error: $context/.dockerignore must exclude $entry before the context is uploaded" >&2
        exit 1
    fi
done

# The tag follows the content of everything the image is built from, so an unchanged tree is
# not rebuilt (a GPU image takes minutes to build).
if [ -z "${VISIONPIPE_IMAGE_TAG:-}" ]; then
    VISIONPIPE_IMAGE_TAG="src-$(find training_job visionpipe -type f ! -path '*/__pycache__/*' \
        ! -name '*.pyc' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-12)"
fi
repository="${TRAINING_IMAGE_REPOSITORY#*/}"
image="$TRAINING_IMAGE_REPOSITORY:$VISIONPIPE_IMAGE_TAG"

existing="$(az acr repository show-tags --name "$AZURE_CONTAINER_REGISTRY_NAME" \
    --repository "$repository" --query "[?@=='$VISIONPIPE_IMAGE_TAG'] | [0]" -o tsv 2>/dev/null || true)"
if [ "$existing" = "$VISIONPIPE_IMAGE_TAG" ]; then
    echo "training image $image already in the registry"
else
    echo "building $image from $dockerfile in $AZURE_CONTAINER_REGISTRY_NAME (az acr build)"
    az acr build --registry "$AZURE_CONTAINER_REGISTRY_NAME" --image "$repository:$VISIONPIPE_IMAGE_TAG" \
        --file "$dockerfile" --platform linux/amd64 "$context"
fi

az config set extension.use_dynamic_install=yes_without_prompt >/dev/null 2>&1 || true
echo "pointing job $TRAINING_JOB_NAME at $image"
az containerapp job update --name "$TRAINING_JOB_NAME" --resource-group "$AZURE_RESOURCE_GROUP" \
    --image "$image" --output none

# Keep the next `azd provision` from putting the placeholder image back.
if [ "${VISIONPIPE_AZD_HOOK:-false}" = "true" ]; then
    azd env set VISIONPIPE_TRAINING_IMAGE "$image" >/dev/null
else
    echo "export VISIONPIPE_TRAINING_IMAGE=$image   # before the next az deployment"
fi
