#!/bin/sh
# Print the outputs of a subscription deployment as `export NAME=value` lines, for the scripts
# above when you deploy without azd:
#   eval "$(scripts/outputs_env.sh [deployment-name])"     (default: visionpipe-$AZURE_ENV_NAME)
set -eu
name="${1:-visionpipe-${AZURE_ENV_NAME:?set AZURE_ENV_NAME or pass the deployment name}}"
az deployment sub show --name "$name" --query properties.outputs -o json | python3 -c '
import json, shlex, sys
for key, item in json.load(sys.stdin).items():
    value = item["value"]
    value = str(value).lower() if isinstance(value, bool) else str(value)
    # ARM may change the case of output names; ours are all UPPER_SNAKE.
    print(f"export {key.upper()}={shlex.quote(value)}")
'
