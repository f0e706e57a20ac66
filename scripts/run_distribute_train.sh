#!/usr/bin/env bash
# Data-parallel training on Ascend with an HCCL rank table: one process per device of this server.
#
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE DATA_PATH [CONFIG_PATH] [RESUME_CKPT] [--] [train.py args]
#
# CONFIG_PATH defaults to default_config.yaml; RESUME_CKPT may be "" (none). The positional arguments end at
# the fourth, at "--" or at the first argument starting with "-"; the rest is passed to train.py. Environment:
#   SERVER_ID     this server's server_id in a multi-server table (default: found from this host's addresses)
#   OUTPUT_DIR    checkpoints, metrics and config of the run [./output]
#   RUN_DIR       one working folder and log per rank: RUN_DIR/rank_<k>/log [./run_distribute]
#   DRY_RUN=1     print each rank's environment and command instead of starting it
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
source "$ROOT/scripts/args.sh"
if ! split_args 4 "$@" || [ ${#POS[@]} -lt 2 ]; then
  echo "usage: bash scripts/run_distribute_train.sh RANK_TABLE_FILE DATA_PATH [CONFIG_PATH] [RESUME_CKPT] [--] [train.py args]" >&2
  exit 2
fi
set -- "${REST[@]}"
RANK_TABLE_FILE="$(realpath -m "${POS[0]}")"
DATA_PATH="$(realpath -m "${POS[1]}")"
CONFIG_PATH="$(realpath -m "${POS[2]:-$ROOT/default_config.yaml}")"
RESUME_CKPT="${POS[3]:-}"
OUTPUT_DIR="$(realpath -m "${OUTPUT_DIR:-./output}")"
RUN_DIR="$(realpath -m "${RUN_DIR:-./run_distribute}")"

[ -f "$CONFIG_PATH" ] || { echo "error: config file not found: $CONFIG_PATH" >&2; exit 2; }
[ -d "$DATA_PATH" ] || { echo "error: data folder not found: $DATA_PATH" >&2; exit 2; }
PLAN="$(PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m tools.rank_table check "$RANK_TABLE_FILE" ${SERVER_ID:+--server_id "$SERVER_ID"})" || exit 2

LOCAL_RANKS=$(printf '%s\n' "$PLAN" | wc -l)
CORES=$(nproc)
PER_RANK=$(( CORES / LOCAL_RANKS > 0 ? CORES / LOCAL_RANKS : 1 ))
EXTRA=()
[ -n "$RESUME_CKPT" ] && EXTRA+=(--resume_ckpt "$(realpath -m "$RESUME_CKPT")")

PIDS=()
RANKS=()
LOCAL=0
while read -r RANK_ID DEVICE_ID RANK_SIZE; do
  WORK="$RUN_DIR/rank_$RANK_ID"
  CMD=("$PYTHON" "$ROOT/train.py" --config_path "$CONFIG_PATH" --device_target Ascend --run_distribute true
       --device_num "$RANK_SIZE" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" "${EXTRA[@]}" "$@")
  if command -v taskset >/dev/null 2>&1 && [ "$CORES" -ge "$LOCAL_RANKS" ]; then
    FIRST=$(( LOCAL * PER_RANK )); LAST=$(( FIRST + PER_RANK - 1 ))
    CMD=(taskset -c "$FIRST-$LAST" "${CMD[@]}")
  fi
  if [ "${DRY_RUN:-0}" = "1" ]; then
    echo "rank $RANK_ID: RANK_TABLE_FILE=$RANK_TABLE_FILE RANK_SIZE=$RANK_SIZE RANK_ID=$RANK_ID DEVICE_ID=$DEVICE_ID cwd=$WORK log=$WORK/log"
    echo "rank $RANK_ID: ${CMD[*]}"
  else
    mkdir -p "$WORK"
    ( cd "$WORK" && LOCAL_WORKER_NUM="$LOCAL_RANKS" RANK_TABLE_FILE="$RANK_TABLE_FILE" RANK_SIZE="$RANK_SIZE" RANK_ID="$RANK_ID" DEVICE_ID="$DEVICE_ID" \
        exec "${CMD[@]}" > "$WORK/log" 2>&1 ) &
    PIDS+=($!)
    RANKS+=("$RANK_ID")
    echo "rank $RANK_ID (device $DEVICE_ID): pid $!, log $WORK/log"
  fi
  LOCAL=$(( LOCAL + 1 ))
done <<< "$PLAN"
[ "${DRY_RUN:-0}" = "1" ] && exit 0

# Wait for all ranks; when one fails, stop the others and name it.
while [ ${#PIDS[@]} -gt 0 ]; do
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      if ! wait "${PIDS[$i]}"; then
        echo "error: rank ${RANKS[$i]} failed (see $RUN_DIR/rank_${RANKS[$i]}/log); stopping the other ranks" >&2
        for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
        exit 1
      fi
      unset 'PIDS[i]' 'RANKS[i]'
    fi
  done
  sleep 2
done
echo "all ranks finished; outputs in $OUTPUT_DIR"
