#!/usr/bin/env bash
# Evaluation: every argument goes to eval.py. With WORKER_NUM > 1 the split is evaluated by that many msrun
# workers (disjoint shards, counts summed; every image counted once).
#   bash scripts/run_eval.sh --checkpoint_path output/resnet50-best.ckpt --data_path /data/imagenet/val
#   WORKER_NUM=8 bash scripts/run_eval.sh --checkpoint_path CKPT --data_path VAL --device_target GPU
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKER_NUM="${WORKER_NUM:-1}"
if [ "$WORKER_NUM" -le 1 ]; then
  exec "${PYTHON:-python}" "$ROOT/eval.py" "$@"
fi
LOG_DIR="$(realpath -m "${LOG_DIR:-./msrun_eval_log}")"
export LOCAL_WORKER_NUM="${LOCAL_WORKER_NUM:-$WORKER_NUM}"  # eval.py shares the cores among the local ranks
msrun --worker_num="$WORKER_NUM" --local_worker_num="${LOCAL_WORKER_NUM:-$WORKER_NUM}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-8119}" --node_rank="${NODE_RANK:-0}" \
  --log_dir="$LOG_DIR" --join=True "$ROOT/eval.py" --run_distribute true "$@"
# rank 0 printed the result; show it here too
grep -h '^{"top1"' "$LOG_DIR/worker_0.log" | tail -n 1
