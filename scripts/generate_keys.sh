#!/bin/sh
# Make the two API keys (Training-Key, Prediction-Key) once per environment.
#
# The Bicep takes them as secure parameters (infra/main.bicepparam reads VISIONPIPE_TRAINING_KEY
# and VISIONPIPE_PREDICTION_KEY) and stores them in Key Vault as training-key / prediction-key.
# A key already set is kept, so redeploying never rotates keys by accident; --rotate makes new ones.
#
#   scripts/generate_keys.sh --azd        stores them with `azd env set` (the preprovision hook)
#   eval "$(scripts/generate_keys.sh)"     prints `export ...` lines (deploying without azd)
#   add --rotate to replace keys that exist
set -eu

rotate=false
use_azd=false
for arg in "$@"; do
    case "$arg" in
        --rotate) rotate=true ;;
        --azd) use_azd=true ;;
        *) echo "usage: $0 [--azd] [--rotate]" >&2; exit 2 ;;
    esac
done

new_key() {
    # 32 hex characters (128 random bits), the shape of a Custom Vision key.
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 16
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import secrets; print(secrets.token_hex(16))'
    else
        od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
        echo
    fi
}

for name in VISIONPIPE_TRAINING_KEY VISIONPIPE_PREDICTION_KEY; do
    eval "current=\${$name:-}"
    if [ -n "$current" ] && [ "$rotate" = false ]; then
        value="$current"
        state="kept"
    else
        value="$(new_key)"
        state="generated"
    fi
    if [ "$use_azd" = true ]; then
        if [ "$state" = generated ]; then
            azd env set "$name" "$value" >/dev/null
        fi
        echo "$name: $state (azd environment ${AZURE_ENV_NAME:-})" >&2
    else
        echo "export $name=$value"
        echo "$name: $state; keep it (or read it back from Key Vault after deployment)" >&2
    fi
done
