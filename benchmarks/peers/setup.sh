#!/usr/bin/env bash
# Create the peers' environments for `python -m benchmarks e2e` (and `oip`), one virtualenv
# each, with pinned versions, so that no peer's dependencies touch Schooner's or another
# peer's:
#
#     bash benchmarks/peers/setup.sh                  # every environment below
#     bash benchmarks/peers/setup.sh mosec triton     # only these
#
# Environments (under $SCHOONER_BENCH_PEERS, default ~/.cache/schooner/bench-peers):
#
#   venv           LitServe and Ray Serve                   (e2e: litserve, ray)
#   mosec-venv     Mosec                                    (e2e: mosec)
#   mlserver-venv  MLServer, uvloop<0.22 (1.7 fails on 0.22)(e2e: mlserver; oip)
#   bentoml-venv   BentoML                                  (e2e: bentoml)
#   triton-venv    nvidia-pytriton, which bundles tritonserver and its Python backend
#                  (runs on CPU; PyPI's `tritonserver` does not run on this Python/glibc)
#
# torch==2.13.0 (the version of Schooner's environment) goes in FIRST, from the CPU wheel:
# any other torch pulls gigabytes of CUDA. $PYTHON (default python3) is the interpreter the
# environments are made from; Triton's Python-backend stub needs its shared libpython
# (benchmarks/peers/triton.py puts its lib folder on LD_LIBRARY_PATH).
# Every other package is held to the version in constraints/<environment>.txt (pip freeze
# of the environment this script made when the peers were added), so an environment made
# later comes out the same; `FREE=1` leaves them free (then refresh those files with
# `pip freeze`). An existing environment is reused: pip only adds what is missing. Remove
# its folder to start it over.
set -euo pipefail

PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOME_DIR=${SCHOONER_BENCH_PEERS:-$HOME/.cache/schooner/bench-peers}
TORCH=torch==2.13.0

declare -A PACKAGES=(
    [venv]="litserve==0.2.19 ray[serve]==2.60.0"
    [mosec-venv]="mosec==0.9.8 numpy<3"
    [mlserver-venv]="mlserver==1.7.1 uvloop<0.22"
    [bentoml-venv]="bentoml==1.4.40"
    [triton-venv]="nvidia-pytriton==0.7.0"
)
declare -A NAMES=([litserve]=venv [ray]=venv [venv]=venv [mosec]=mosec-venv
                  [mlserver]=mlserver-venv [bentoml]=bentoml-venv [triton]=triton-venv)

wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then
    wanted=(venv mosec mlserver bentoml triton)
fi

mkdir -p "$HOME_DIR"
for name in "${wanted[@]}"; do
    env=${NAMES[$name]:-}
    if [ -z "$env" ]; then
        echo "unknown environment '$name'; one of: ${!NAMES[*]}" >&2
        exit 2
    fi
    dir=$HOME_DIR/$env
    echo "== $dir: $TORCH, then ${PACKAGES[$env]}"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    pins=()
    if [ -z "${FREE:-}" ] && [ -f "$HERE/constraints/$env.txt" ]; then
        pins=(-c "$HERE/constraints/$env.txt")
    fi
    "$dir/bin/python" -m pip install -q --upgrade pip
    "$dir/bin/python" -m pip install -q "${pins[@]}" "$TORCH"
    # shellcheck disable=SC2086  # the list is meant to split
    "$dir/bin/python" -m pip install -q "${pins[@]}" $TORCH ${PACKAGES[$env]}
    "$dir/bin/python" -m pip check || echo "(pip check complained about $env; see above)"
done
