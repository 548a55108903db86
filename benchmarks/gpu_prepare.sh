#!/usr/bin/env bash
# Prepare the GPU session (benchmarks/gpu_session.sh), here on the CPU machine, before the
# device call: the Python packages the device image lacks as wheels for CPython 3.12 on
# manylinux x86-64 in .whl/, and the files data=asterisk16k reads in .gpu_data/; both ignored
# through .git/info/exclude and carried by the call (carry=[".whl", ".gpu_data"]).
#
#   bash benchmarks/gpu_prepare.sh          # from the repository root; prints what will travel
#   bash benchmarks/gpu_prepare.sh --clean  # remove .whl/ and .gpu_data/ again
#
# Versions are this checkout's .venv's (so the device runs what the tests here ran), else the
# newest. antlr4-python3-runtime 4.9.3 (pure Python) and pesq have no wheels: their sdists
# travel and gpu_session.sh builds them there (setuptools, numpy, Cython and a compiler are in
# the image); if pesq fails to build, PESQ scores are NaN there and the runs' best.pt come back
# for evaluating here.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_ROOT=${PYRO_DVAE_DATA:-/work/shared/data}
VENV_PY=${VENV_PY:-.venv/bin/python}
LIMIT_MIB=64

if [[ ${1:-} == --clean ]]; then
  rm -rf .whl .gpu_data
  echo "removed .whl/ and .gpu_data/"
  exit 0
fi

# Missing from the device image (/work/.library/device/KINDS.md); present there and so not
# carried: torch, numpy, scipy, opt-einsum, tqdm, numba, llvmlite, lazy-loader, msgpack, joblib,
# scikit-learn, matplotlib, pillow, pyyaml, packaging, requests, typing-extensions.
WHEELS=(
  pyro-ppl pyro-api                                 # pyro-ppl needs pyro-api, opt-einsum, tqdm
  hydra-core omegaconf                              # and antlr4 4.9.* (an sdist, below)
  librosa soxr audioread pooch platformdirs decorator
  soundfile cffi pycparser                          # soundfile bundles libsndfile, needs cffi
  pystoi
)
SDISTS=(antlr4-python3-runtime pesq)  # no wheels: built there (gpu_session.sh)

for ignored in /.whl/ /.gpu_data/; do
  grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
done

pinned() {  # NAME -> NAME==VERSION as installed in this checkout's venv, else NAME
  local version
  version=$("$VENV_PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' \
    "$1" 2>/dev/null) && echo "$1==$version" || echo "$1"
}

mkdir -p .whl
specs=()
for name in "${WHEELS[@]}"; do specs+=("$(pinned "$name")"); done
echo "wheels: ${specs[*]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${specs[@]}"
for name in "${SDISTS[@]}"; do  # metadata from the venv's build tools: no isolated build env
  "$VENV_PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d .whl \
    "$(pinned "$name")"
done

rm -rf .gpu_data && mkdir -p .gpu_data/asterisk_en_allison_16k  # audio/**/*.flac alone
cp -r "$DATA_ROOT/asterisk_en_allison_16k/audio" .gpu_data/asterisk_en_allison_16k/

mib() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {printf "%.1f", s / 2^20}'; }
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk 'END {printf "%.1f", $1 / 2^20}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null |
  awk 'END {printf "%.1f", $1 / 2^20}')
whl=$(mib .whl)
data=$(mib .gpu_data)
total=$(echo "$tracked ${untracked:-0} $whl $data" | awk '{printf "%.1f", $1 + $2 + $3 + $4}')
ls .whl
echo "travels: tracked $tracked MiB + untracked ${untracked:-0} MiB + .whl $whl MiB" \
  "+ .gpu_data $data MiB = $total MiB (limit $LIMIT_MIB MiB)"
awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {exit !(t < l - 4)}' ||
  { echo "error: $total MiB leaves under 4 MiB of the device call's $LIMIT_MIB MiB" >&2; exit 1; }
