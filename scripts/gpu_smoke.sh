#!/usr/bin/env bash
# The GPU smoke check, for a session that is lent a GPU machine (the device tool); never CI's.
#
#   scripts/gpu_smoke.sh wheels   # here, with PyPI: the Python 3.12 wheels the GPU image lacks
#                                 #   (albumentations and its needs) into .whl/ (git-ignored)
#   scripts/gpu_smoke.sh run      # there: train on one GPU in bf16, then with two processes;
#                                 #   writes $OUT/gpu_smoke.json (or outputs/gpu_smoke/)
#
# The device tool's call: run(command="scripts/gpu_smoke.sh run", carry=[".whl"], timeout_s=420).
# Under 5 minutes on one H200: a synthetic 4-class shapes set (2,000 images of 32 px), resnet18
# for 4 epochs (tracking off: the GPU image has no MLflow), the two-process run only where there
# are two GPUs (NCCL does not put two ranks on one device).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
  wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl \
      albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 \
      typing-inspection==0.4.5 annotated-types==0.8.0 stringzilla==5.3.2 simsimd==6.5.16
    ;;
  run)
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
      export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
      NO_ALBUMENTATIONS_UPDATE=1 MLFLOW_TRACKING_URI=off
    python3 scripts/gpu_smoke.py --out "${OUT:-outputs/gpu_smoke}" "${@:2}"
    ;;
  *) echo "usage: scripts/gpu_smoke.sh wheels|run [--cpu]" >&2; exit 2 ;;
esac
