#!/usr/bin/env bash
# Fill the ignored folder .carry/ with what benchmarks/run_device.sh needs on a GPU machine that reaches no network:
# the CIFAR-10 JPEG pack (the suite decodes it from its bytes: no unpack tool, no 60,000 files), the commit being
# measured, and a wheel of fastcore (the notebooks' test helpers; the GPU image has torch, torchvision, numpy, pandas,
# matplotlib, seaborn, but no fastcore/nbdev).
# Run it here, in the checkout, before the device call; then carry ".carry".
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${IGNORE_ATTN_SHARED:-../shared}"
mkdir -p .carry/wheels
cp "$shared/data/cifar10-jpg.npz" .carry/
rm -f .carry/cifar10_jpg_unpack.py   # left by an older version of this script
dirty=""; [ -n "$(git status --porcelain --untracked-files=no)" ] && dirty=dirty
echo "$(git rev-parse HEAD) $dirty" > .carry/COMMIT
fastcore="$(python -c 'import fastcore; print(fastcore.__version__)')"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .carry/wheels "fastcore==$fastcore"
du -sh .carry; ls -l .carry .carry/wheels
