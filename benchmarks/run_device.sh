#!/usr/bin/env bash
# The one command for a lent GPU machine (run from the checkout there, with .carry/ carried; see prepare_carry.sh):
# install the carried wheels into /tmp (no network), say what the machine is, and run the suite under a hard timeout.
# The suite appends every JSON line straight into $OUT and writes its stage logs live into $OUT/logs, so what was
# measured comes back even when the call is stopped at its limit. Extra arguments go to the suite (e.g. --stages ...).
# Times: a 600 s call holds the machine start's leftovers, this preamble (~20 s), the suite (timeout 450 s, budget
# 400 s: the stages plan within the budget, the timeout is the backstop) and margin.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .carry/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/wheels/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
py="${PYTHON:-python3}"
"$py" -c "import torch, torchvision; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'torchvision', torchvision.__version__)"
out=()
if [ -n "${OUT:-}" ]; then out=(--out "$OUT" --logs "$OUT/logs"); fi
timeout --signal=TERM --kill-after=15 "${SUITE_TIMEOUT:-450}" "$py" benchmarks/device_suite.py --budget "${BUDGET:-400}" \
    --pack .carry/cifar10-jpg.npz "${out[@]}" "$@"
rc=$?
echo "suite exit code $rc"
exit $rc
