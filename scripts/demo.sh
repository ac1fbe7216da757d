#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the main job on the embedded offline model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/tvaccine demo "$@"
