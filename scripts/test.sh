#!/usr/bin/env bash
# Set up a virtual environment with the pinned test versions (once) and run the test suite offline.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k hydra_tok` or `HYDRA_RUN_SLOW=1 scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${HYDRA_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# torch is named in the same pip command so that pip takes the CPU wheel instead of a CUDA build.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c scripts/constraints.txt torch==2.13.0 -e ".[test]"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
exec "$venv/bin/python" -m pytest "$@"
