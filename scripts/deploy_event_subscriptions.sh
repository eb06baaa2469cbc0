#!/bin/sh
# Second deployment phase: the Event Grid subscriptions (infra/modules/event-subscriptions.bicep).
#
# An AzureFunction endpoint is validated against the deployed function, so this runs after the
# code is deployed: azd runs it as the postdeploy hook; by hand, after publishing the app.
# Waits until the Function app lists every target function, then deploys the module into the
# resource group (idempotent: running it again changes nothing).
#
# Needs: az (logged in), python3, and the deployment outputs in the environment:
#   AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME EVENT_GRID_SYSTEM_TOPIC_NAME AZURE_STORAGE_ACCOUNT_NAME
set -eu
cd "$(dirname "$0")/.."

: "${AZURE_RESOURCE_GROUP:?set AZURE_RESOURCE_GROUP (deployment output)}"
: "${AZURE_FUNCTION_APP_NAME:?set AZURE_FUNCTION_APP_NAME (deployment output)}"
: "${EVENT_GRID_SYSTEM_TOPIC_NAME:?set EVENT_GRID_SYSTEM_TOPIC_NAME (deployment output)}"
: "${AZURE_STORAGE_ACCOUNT_NAME:?set AZURE_STORAGE_ACCOUNT_NAME (deployment output)}"

# The target functions, from the same names the Bicep uses.
functions="$(python3 -c 'import json; print(" ".join(sorted(set(json.load(open("infra/names.json"))["EVENT_SUBSCRIPTIONS"].values()))))')"

attempts="${VISIONPIPE_FUNCTION_WAIT_ATTEMPTS:-60}"
for fn in $functions; do
    i=0
    until az functionapp function show --resource-group "$AZURE_RESOURCE_GROUP" \
        --name "$AZURE_FUNCTION_APP_NAME" --function-name "$fn" --query name -o tsv >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -ge "$attempts" ]; then
            echo "error: function $fn not found in $AZURE_FUNCTION_APP_NAME; is the code deployed?" >&2
            exit 1
        fi
        echo "waiting for function $fn to be indexed ($i/$attempts)"
        sleep 10
    done
done

echo "deploying the Event Grid subscriptions on $EVENT_GRID_SYSTEM_TOPIC_NAME"
az deployment group create --resource-group "$AZURE_RESOURCE_GROUP" \
    --name visionpipe-event-subscriptions \
    --template-file infra/modules/event-subscriptions.bicep \
    --parameters systemTopicName="$EVENT_GRID_SYSTEM_TOPIC_NAME" \
        functionAppName="$AZURE_FUNCTION_APP_NAME" storageAccountName="$AZURE_STORAGE_ACCOUNT_NAME" \
    --output none
echo "event subscriptions deployed"
