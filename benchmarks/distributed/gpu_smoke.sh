#!/usr/bin/env bash
# A few T-Vaccine steps under each shipped accelerate config (DDP, DeepSpeed ZeRO-2/3, FSDP2) on every visible GPU,
# checked rank by rank; see README.md here. Extra arguments go to smoke.py (e.g. --num-processes 2 --bf16).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
"$PY" -c "import torch, sys; n = torch.cuda.device_count(); print(f'{n} CUDA GPU(s)'); sys.exit(0 if n else 3)" \
    || { echo "no CUDA GPU: run 'python benchmarks/distributed/smoke.py --configs cpu-ddp' for the CPU version"; exit 3; }
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} exec "$PY" benchmarks/distributed/smoke.py --configs ddp zero2 zero3 fsdp "$@"
