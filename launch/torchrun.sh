#!/usr/bin/env bash
# Launch meta-training with torchrun: one node, or several with a c10d rendezvous.
#
#   launch/torchrun.sh [--dry-run] [--nproc N] [--nnodes M --node-rank R --master HOST:PORT] \
#       -- --config configs/ml100k_smollm2.yaml --set distributed.deepspeed_config=ds_configs/zero2.json
#
# Everything after `--` goes to `python -m metarec train` (the `metarec train` options).
set -euo pipefail
nproc=1 nnodes=1 node_rank=0 master="127.0.0.1:29500" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --nproc) nproc="$2"; shift 2 ;;
    --nnodes) nnodes="$2"; shift 2 ;;
    --node-rank) node_rank="$2"; shift 2 ;;
    --master) master="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "torchrun.sh: unknown option $1 (train options go after --)" >&2; exit 2 ;;
  esac
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
command=(torchrun --nproc_per_node "$nproc" --nnodes "$nnodes" --node_rank "$node_rank"
         --rdzv_backend c10d --rdzv_endpoint "$master"
         -m metarec train "$@")
if [[ $dry_run == 1 ]]; then printf '%q ' "${command[@]}"; echo; exit 0; fi
exec "${command[@]}"
