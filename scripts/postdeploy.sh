#!/bin/sh
# azd postdeploy hook: the code is deployed, so the functions exist; create the Event Grid
# subscriptions that deliver BlobCreated events to them.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deploy_event_subscriptions.sh
