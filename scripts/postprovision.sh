#!/bin/sh
# azd postprovision hook: build and push the training image, then point the job at it.
# Set VISIONPIPE_SKIP_IMAGE_BUILD=true to skip (for example when only app settings changed).
set -eu
cd "$(dirname "$0")/.."
if [ "${VISIONPIPE_SKIP_IMAGE_BUILD:-false}" = "true" ]; then
    echo "VISIONPIPE_SKIP_IMAGE_BUILD=true: training image not built"
    exit 0
fi
if [ ! -f training_job/Dockerfile ]; then
    echo "warning: training_job/Dockerfile not found; the training job keeps its placeholder image" >&2
    exit 0
fi
VISIONPIPE_AZD_HOOK=true sh scripts/build_training_image.sh
