#!/usr/bin/env bash
# The learner-alone GPU check (scripts/gpu_check.py) as one command.
#
#   scripts/gpu_check.sh prepare        # here, with the project's venv: DeepSpeed, pydantic & co. for
#                                       # the GPU image's Python 3.12 into .cache/gpu-check/site
#   scripts/gpu_check.sh [ARGS...]      # on the GPU machine, carrying .cache/gpu-check: the check,
#                                       # killed after $GPU_CHECK_TIMEOUT s (default 540); result in
#                                       # $OUT/gpu_check.json, its headline as the last line of stdout
#
# ARGS go to scripts/gpu_check.py (--help lists them). Exit status: gpu_check.py's (0: all checks
# passed), 124 when the time ran out (the JSON holds the phases that finished).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${1:-}" = prepare ]; then
    shift
    exec "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py --prepare-carry "$@"
fi

[ -d .cache/gpu-check/site ] \
    || echo "gpu_check.sh: no .cache/gpu-check/site: DeepSpeed must come from the image (see 'prepare')" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout -k 15 "${GPU_CHECK_TIMEOUT:-540}" "${PYTHON:-python3}" scripts/gpu_check.py "$@"
