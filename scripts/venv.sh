#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating it (pinned versions, CPU torch) on first use:
#   scripts/venv.sh hydra-hf demo
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${HYDRA_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# torch is named in the same pip command so that pip takes the CPU wheel instead of a CUDA build.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c scripts/constraints.txt torch==2.13.0 -e ".[test]"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export PATH="$PWD/$venv/bin:$PATH"
exec "$@"
