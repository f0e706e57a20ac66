#!/usr/bin/env bash
# Single-device training: every argument goes to train.py.
#   DEVICE_ID=3 bash scripts/run_standalone_train.sh --config_path config/resnet50_imagenet2012_thor.yaml \
#       --device_target Ascend --data_path /data/imagenet/train
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEVICE_ID="${DEVICE_ID:-0}"
set +e
"${PYTHON:-python}" "$ROOT/train.py" "$@"
STATUS=$?
if [ "$STATUS" -eq 136 ]; then
  echo "error: train.py was killed by SIGFPE: MindSpore's JPEG decoder crashes on some truncated files; run python -m tools.check_dataset on the data, then resume with --resume_ckpt auto" >&2
fi
exit "$STATUS"
