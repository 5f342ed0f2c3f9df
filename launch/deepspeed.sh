#!/usr/bin/env bash
# Launch meta-training with the DeepSpeed launcher; several nodes through a hostfile
# ("host slots=N" per line, passwordless ssh between them).
#
#   launch/deepspeed.sh [--dry-run] [--zero zero2|zero3|zero3_offload] [--gpus N] \
#       [--hostfile FILE] -- --config configs/ml100k_smollm2.yaml --output-dir runs/x
#
# Everything after `--` goes to `python -m metarec train`; --zero picks ds_configs/<name>.json.
set -euo pipefail
zero=zero2 gpus=1 hostfile="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --zero) zero="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "deepspeed.sh: unknown option $1 (train options go after --)" >&2; exit 2 ;;
  esac
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
ds_config="$repo/ds_configs/$zero.json"
[[ -f $ds_config ]] || { echo "deepspeed.sh: no $ds_config" >&2; exit 2; }
command=(deepspeed)
if [[ -n $hostfile ]]; then command+=(--hostfile "$hostfile"); else command+=(--num_gpus "$gpus"); fi
command+=(--module metarec train "$@" --set "distributed.deepspeed_config=$ds_config")
if [[ $dry_run == 1 ]]; then printf '%q ' "${command[@]}"; echo; exit 0; fi
exec "${command[@]}"
