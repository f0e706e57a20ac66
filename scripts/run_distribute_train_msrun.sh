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
#   DRY_RUN=1         print the msrun command instead of starting it
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
CMD=(msrun --worker_num="$WORKER_NUM" --local_worker_num="$LOCAL_WORKER_NUM" --master_addr="$MASTER_ADDR"
     --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" --log_dir="$LOG_DIR" --join=True
     "$ROOT/train.py" --run_distribute true --device_num "$WORKER_NUM" "$@")
if [ "${DRY_RUN:-0}" = "1" ]; then
  echo "${CMD[*]}"
  exit 0
fi
echo "msrun: $WORKER_NUM workers ($LOCAL_WORKER_NUM here, node $NODE_RANK), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR"
mkdir -p "$LOG_DIR"
export LOCAL_WORKER_NUM  # train.py shares the cores among the local ranks (data workers)
set +e
"${CMD[@]}" 2>&1 | tee "$LOG_DIR/msrun.out"
STATUS=${PIPESTATUS[0]}
set -e
if [ "$STATUS" -ne 0 ]; then
  # msrun reports "Worker process PID exit with exception. Error code: N"; train.py logged "rank K ...: pid PID".
  LINE=$(grep -o "Worker process [0-9]* exit with exception. Error code: -\?[0-9]*" "$LOG_DIR/msrun.out" | head -n 1 || true)
  PID=$(echo "$LINE" | awk '{print $3}')
  CODE=$(echo "$LINE" | awk '{print $NF}')
  RANK=""
  if [ -n "$PID" ]; then
    RANK=$(grep -ho "rank [0-9]* of [0-9]*: pid $PID\b" "$LOG_DIR"/worker_*.log 2>/dev/null | head -n 1 | awk '{print $2}' || true)
  fi
  HINT=""
  if [ "$CODE" = "-8" ]; then
    HINT=" (SIGFPE: MindSpore's JPEG decoder crashes on some truncated files; run python -m tools.check_dataset on the data)"
  fi
  if [ -n "$RANK" ]; then
    echo "error: distributed training failed: rank $RANK (pid $PID) exited first with code $CODE$HINT; the job was stopped (logs in $LOG_DIR)" >&2
  else
    echo "error: distributed training failed (msrun exit $STATUS); logs in $LOG_DIR" >&2
  fi
fi
exit "$STATUS"
