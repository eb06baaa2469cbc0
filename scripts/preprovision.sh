#!/bin/sh
# azd preprovision hook: make sure the API keys exist before the Bicep needs them.
set -eu
cd "$(dirname "$0")/.."
sh scripts/generate_keys.sh --azd
