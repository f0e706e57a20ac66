#!/usr/bin/env bash
# Single-device training: every argument goes to train.py.
#   DEVICE_ID=3 bash scripts/run_standalone_train.sh --config_path config/resnet50_imagenet2012_thor.yaml \
#       --device_target Ascend --data_path /data/imagenet/train
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEVICE_ID="${DEVICE_ID:-0}"
exec "${PYTHON:-python}" "$ROOT/train.py" "$@"
