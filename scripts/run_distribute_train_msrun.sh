#!/usr/bin/env bash
# Data-parallel training with MindSpore's msrun launcher (GPU and CPU; one node or several).
#
#   bash scripts/run_distribute_train_msrun.sh [train.py arguments ...]
#
# Environment (defaults in brackets):
#   WORKER_NUM        total processes over all nodes [8]
#   LOCAL_WORKER_NUM  processes on this node [WORKER_NUM]
#   MASTER_ADDR       address of node 0 [127.0.0.1]
#   MASTER_PORT       port of node 0 [8118]
#   NODE_RANK         this node's index [0]
#   LOG_DIR           msrun's per-worker logs [./msrun_log]
# Every argument is passed to train.py, after --run_distribute true --device_num $WORKER_NUM.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKER_NUM="${WORKER_NUM:-8}"
LOCAL_WORKER_NUM="${LOCAL_WORKER_NUM:-$WORKER_NUM}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-8118}"
NODE_RANK="${NODE_RANK:-0}"
LOG_DIR="$(realpath -m "${LOG_DIR:-./msrun_log}")"
if ! command -v msrun >/dev/null 2>&1; then
  echo "error: msrun not found on PATH (it comes with mindspore; activate its environment)" >&2
  exit 2
fi
echo "msrun: $WORKER_NUM workers ($LOCAL_WORKER_NUM here, node $NODE_RANK), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR"
exec msrun --worker_num="$WORKER_NUM" --local_worker_num="$LOCAL_WORKER_NUM" --master_addr="$MASTER_ADDR" \
  --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" --log_dir="$LOG_DIR" --join=True \
  "$ROOT/train.py" --run_distribute true --device_num "$WORKER_NUM" "$@"
