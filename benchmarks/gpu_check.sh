#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) for the device tool: see README "GPU".
#
#   bash benchmarks/gpu_check.sh prepare   # HERE, once: wheels the GPU image lacks -> .whl/
#   bash benchmarks/gpu_check.sh [ARGS]    # ON THE DEVICE (run tool, carry [".whl"]): install
#                                          # the wheels into /tmp/site, run the check into $OUT
#
# The image has torch, torchvision, timm, safetensors, PyYAML, rich, matplotlib, numpy, pillow,
# scipy, pytest(-timeout, -xdist) and hypothesis; torchattacks (imported by robustfeat.attacks),
# grad-cam and ttach (the CAM code) travel as wheels. grad-cam has no wheel on PyPI: pip builds
# one from its sdist (pure Python). The device's copy of the tree has no .git: the SHA goes along.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(torchattacks==3.5.1 ttach==0.0.3)
BUILT=(grad-cam==1.5.7)

if [[ "${1:-}" == "prepare" ]]; then
  python=${PYTHON:-python3}
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
  rm -rf .whl && mkdir .whl
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d .whl "${WHEELS[@]}"
  "$python" -m pip wheel -q --no-deps -w .whl "${BUILT[@]}"
  sha=$(git rev-parse HEAD)
  [[ -z "$(git status --porcelain --untracked-files=no)" ]] || sha="$sha+dirty"
  echo "$sha" >.whl/git_sha
  ls .whl
  exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torchattacks" 2>/dev/null || {
  echo "gpu_check: torchattacks is missing: run 'bash benchmarks/gpu_check.sh prepare' in the" \
    "session's checkout, and name .whl in the run tool's carry" >&2
  exit 2
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 benchmarks/gpu_check.py --out "${OUT:?set OUT or use gpu_check.py --out}" "$@"
