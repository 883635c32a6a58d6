#!/usr/bin/env bash
# The one command for a lent GPU machine (run from the checkout there, with .carry/ carried; see prepare_carry.sh):
# install the carried wheels into /tmp (no network), say what the machine is, run the suite under a hard timeout,
# and copy its JSONL and logs to $OUT so they come back. Extra arguments go to the suite (e.g. --stages ...).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .carry/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/wheels/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'torchvision', torchvision.__version__)"
before="$(ls benchmarks/results/*.jsonl 2>/dev/null || true)"
timeout --signal=TERM --kill-after=15 "${SUITE_TIMEOUT:-560}" python3 benchmarks/device_suite.py --budget "${BUDGET:-480}" \
    --pack .carry/cifar10-jpg.npz --unpack-tool .carry/cifar10_jpg_unpack.py "$@"
rc=$?
if [ -n "${OUT:-}" ]; then
    for f in benchmarks/results/*.jsonl; do case "$before" in *"$f"*) ;; *) cp "$f" "$OUT/";; esac; done
    logs="$(ls -d /tmp/device-suite-work-*/logs 2>/dev/null | tail -1)"
    [ -n "$logs" ] && tar czf "$OUT/suite-logs.tgz" -C "$(dirname "$logs")" logs
fi
echo "suite exit code $rc"
exit $rc
