#!/usr/bin/env bash
# Data-parallel training on the GPUs of this server, in the model zoo's form (msrun starts one process per GPU):
#
#   bash scripts/run_distribute_train_gpu.sh DATASET_PATH [CONFIG_PATH] [--] [train.py flags]
#   WORKER_NUM=4 bash scripts/run_distribute_train_gpu.sh /data/imagenet/train config/resnet50_imagenet2012_thor.yaml
#
# WORKER_NUM (default 8) and the other settings of scripts/run_distribute_train_msrun.sh apply.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/args.sh"
if ! split_args 2 "$@" || [ ${#POS[@]} -lt 1 ]; then
  echo "usage: bash scripts/run_distribute_train_gpu.sh DATASET_PATH [CONFIG_PATH] [--] [train.py flags]" >&2
  exit 2
fi
ARGS=(--device_target GPU --data_path "${POS[0]}")
add_flag ARGS --config_path "${POS[1]:-}"
exec bash "$ROOT/scripts/run_distribute_train_msrun.sh" "${ARGS[@]}" "${REST[@]}"
