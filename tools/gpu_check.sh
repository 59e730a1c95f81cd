#!/usr/bin/env bash
# GPU checks, for a machine with CUDA (under 8 minutes on one GPU; the 2-GPU DDP part is skipped there, and says so).
# Each check runs under its own time limit and prints one PASS / FAIL / SKIP line with its numbers:
#   bash tools/gpu_check.sh            # from the project root, after `pip install -e .`
# Exit status: 0 when nothing failed.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'devices', torch.cuda.device_count())"
failed=0
work=$(mktemp -d)  # the pretrained checkpoints, shared by the checks
trap 'rm -rf "$work"' EXIT
run() {  # run CHECK LIMIT_SECONDS
  timeout "$2" python tools/gpu_check.py "$1" --work "$work"
  status=$?
  if [ "$status" -eq 124 ]; then echo "FAIL $1: over its ${2} s limit"; fi
  if [ "$status" -ne 0 ]; then failed=1; fi
}
run stages 120      # trains the four five-epoch models the others start from
run evaluate 60
run precision 60
run syncs 60
run ddp 90
run speed 90        # 8 minutes at most in all
exit "$failed"
