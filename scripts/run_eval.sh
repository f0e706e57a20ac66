#!/usr/bin/env bash
# Evaluation, in the model zoo's form or with eval.py's flags (or both):
#
#   bash scripts/run_eval.sh [DATASET_PATH CHECKPOINT_PATH [CONFIG_PATH]] [--] [eval.py flags]
#   bash scripts/run_eval.sh /data/imagenet/val output/resnet50-best.ckpt
#   bash scripts/run_eval.sh --checkpoint_path output/resnet50-best.ckpt --data_path /data/imagenet/val
#   WORKER_NUM=8 bash scripts/run_eval.sh VAL CKPT --device_target GPU
#
# With WORKER_NUM > 1 the split is evaluated by that many msrun workers (disjoint shards, counts summed; every
# image counted once).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/args.sh"
USAGE="usage: bash scripts/run_eval.sh [DATASET_PATH CHECKPOINT_PATH [CONFIG_PATH]] [--] [eval.py flags]"
if ! split_args 3 "$@" || [ ${#POS[@]} -eq 1 ] || [[ " ${REST[*]:-} " == *" -h "* ]]; then
  echo "$USAGE" >&2
  exit 2
fi
ARGS=()
add_flag ARGS --data_path "${POS[0]:-}"
add_flag ARGS --checkpoint_path "${POS[1]:-}"
add_flag ARGS --config_path "${POS[2]:-}"
WORKER_NUM="${WORKER_NUM:-1}"
if [ "$WORKER_NUM" -le 1 ]; then
  exec "${PYTHON:-python}" "$ROOT/eval.py" "${ARGS[@]}" "${REST[@]}"
fi
LOG_DIR="$(realpath -m "${LOG_DIR:-./msrun_eval_log}")"
export LOCAL_WORKER_NUM="${LOCAL_WORKER_NUM:-$WORKER_NUM}"  # eval.py shares the cores among the local ranks
msrun --worker_num="$WORKER_NUM" --local_worker_num="${LOCAL_WORKER_NUM:-$WORKER_NUM}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-8119}" --node_rank="${NODE_RANK:-0}" \
  --log_dir="$LOG_DIR" --join=True "$ROOT/eval.py" --run_distribute true "${ARGS[@]}" "${REST[@]}"
# rank 0 printed the result; show it here too
grep -h '^{"top1"' "$LOG_DIR/worker_0.log" | tail -n 1
