#!/usr/bin/env bash
# GPU checks, for a machine with CUDA (one GPU: about 6 minutes; the 2-GPU DDP part is skipped, and says so).
# Each check runs under its own time limit and prints one PASS / FAIL / SKIP line with its numbers:
#   bash tools/gpu_check.sh            # from the project root, after `pip install -e .`
# Exit status: 0 when nothing failed.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'devices', torch.cuda.device_count())"
failed=0
run() {  # run CHECK LIMIT_SECONDS
  timeout "$2" python tools/gpu_check.py "$1"
  status=$?
  if [ "$status" -eq 124 ]; then echo "FAIL $1: over its ${2} s limit"; fi
  if [ "$status" -ne 0 ]; then failed=1; fi
}
run stages 150
run evaluate 90
run precision 90
run syncs 90
run ddp 150
run speed 120
exit "$failed"
