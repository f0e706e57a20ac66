#!/usr/bin/env bash
# Single-device training, in the model zoo's form or with train.py's flags (or both):
#
#   bash scripts/run_standalone_train.sh [DATASET_PATH] [CONFIG_PATH] [RESUME_CKPT] [--] [train.py flags]
#   DEVICE_ID=3 bash scripts/run_standalone_train.sh /data/imagenet/train config/resnet50_imagenet2012_thor.yaml \
#       --device_target Ascend
#   bash scripts/run_standalone_train.sh --config_path config/resnet50_cpu_smoke.yaml
#
# RESUME_CKPT: a checkpoint, auto (the newest in output_dir) or "" (none).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/args.sh"
USAGE="usage: bash scripts/run_standalone_train.sh [DATASET_PATH] [CONFIG_PATH] [RESUME_CKPT] [--] [train.py flags]"
if ! split_args 3 "$@" || [[ " ${REST[*]:-} " == *" -h "* ]]; then
  echo "$USAGE" >&2
  exit 2
fi
ARGS=()
add_flag ARGS --data_path "${POS[0]:-}"
add_flag ARGS --config_path "${POS[1]:-}"
add_flag ARGS --resume_ckpt "${POS[2]:-}"
export DEVICE_ID="${DEVICE_ID:-0}"
set +e
"${PYTHON:-python}" "$ROOT/train.py" "${ARGS[@]}" "${REST[@]}"
STATUS=$?
if [ "$STATUS" -eq 136 ]; then
  echo "error: train.py was killed by SIGFPE: MindSpore's JPEG decoder crashes on some truncated files; run python -m tools.check_dataset on the data, then resume with --resume_ckpt auto" >&2
fi
exit "$STATUS"
