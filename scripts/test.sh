#!/usr/bin/env bash
# The test suite, offline, in the project's virtual environment (created on first use).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k hydra_tok` or `HYDRA_RUN_SLOW=1 scripts/test.sh`.
exec "$(dirname "$0")/venv.sh" python -m pytest "$@"
