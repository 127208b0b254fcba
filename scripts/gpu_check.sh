#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py: parts a-f, JSON + Markdown results) set up from nothing: at most 8 minutes on
# one H100. Usage:
#   scripts/gpu_check.sh pack                          # here, with a package registry: what the GPU machine lacks
#   scripts/gpu_check.sh [OUT_DIR] [gpu_check.py args] # there (or anywhere): set up, then run the check
#
# The lent GPU machines have Python 3.12 with PyTorch preinstalled and no package registry (shared FACTS.md), so
# Winnow's other dependencies travel with the working tree: `pack` downloads the wheels of the versions installed
# in this machine's environment for Python 3.12 on x86-64 Linux, unpacks them into one folder, drops Ray's Java
# jar (32 MB, unused) and writes .whl/winnow-gpu-site.tar.xz (git-ignored). Carry `.whl` in the device call. With
# that file present, this script unpacks it once and runs the check with the machine's own python3; without it,
# it sets up the project's environment as scripts/test.sh does (a CPU build of torch where there is no GPU).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PACK=.whl/winnow-gpu-site.tar.xz

# Winnow's dependencies (and theirs) that the GPU machines' image does not have (device KINDS.md's package list);
# mlflow-skinny is MLflow's client and SQLite store without the UI, which the trials do not need (its SQLite store
# imports cryptography, a dependency of the full mlflow package only).
GPU_MISSING="hydra-core omegaconf antlr4-python3-runtime mnist1d faiss-cpu ray jsonschema referencing rpds-py
  jsonschema-specifications mlflow-skinny mlflow-tracing sqlalchemy alembic mako sqlparse opentelemetry-api
  opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto pydantic pydantic-core annotated-types
  typing-inspection cachetools databricks-sdk google-auth pyasn1 pyasn1-modules importlib-metadata gitpython gitdb
  smmap python-dotenv fastapi starlette uvicorn cryptography cffi pycparser"

pack() {
  # shellcheck source=scripts/setup_env.sh
  source scripts/setup_env.sh  # the versions packed are the ones this environment runs the tests with
  local tmp pins target
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  # shellcheck disable=SC2086
  pins="$(python -c 'import sys, importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in sys.argv[1:]))' $GPU_MISSING)"
  target=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  local sdist_only="antlr4-python3-runtime==4.9.3"  # no wheel on the registry: built here (pure Python)
  python -m pip wheel --quiet --no-deps -w "$tmp/whl" "$sdist_only"
  # shellcheck disable=SC2086
  python -m pip download --quiet --no-deps --only-binary=:all: "${target[@]}" -d "$tmp/whl" \
    $(printf '%s\n' $pins | grep -v '^antlr4-python3-runtime==')
  python -m pip install --quiet --no-deps --no-compile --only-binary=:all: "${target[@]}" --target "$tmp/site" \
    "$tmp"/whl/*.whl
  # What a device call cannot afford to carry (its 64 MiB hold the tracked tree too): Ray's Java jar, its libraries
  # Winnow never imports (RLlib, Serve, LLM, Workflow) and its dashboard's web UI (never served: the launcher starts
  # Ray without a dashboard); and the symbol tables of the largest binaries, which running them does not need (a
  # sweep and a data-parallel trial ran with all of this removed and stripped)
  rm -rf "$tmp/site/ray/jars" "$tmp/site/bin" "$tmp/site/ray/"{rllib,serve,llm,workflow} \
    "$tmp/site/ray/dashboard/client/build"
  find "$tmp/site" -name '*.js.map' -delete
  if command -v strip >/dev/null; then
    strip --strip-unneeded "$tmp/site/ray/_raylet.so" "$tmp/site/ray/core/src/ray/gcs/gcs_server" \
      "$tmp/site/ray/core/src/ray/raylet/raylet" "$tmp/site/cryptography/hazmat/bindings/_rust.abi3.so"
  fi
  mkdir -p .whl
  XZ_OPT="-9 -T0" tar -C "$tmp/site" -cJf "$PACK" .
  local tree_kib pack_kib
  tree_kib="$(git ls-files -z | du -ck --files0-from=- | tail -1 | cut -f1)"
  pack_kib="$(du -k "$PACK" | cut -f1)"
  echo "gpu_check: wrote $PACK ($((pack_kib / 1024)) MiB; with the tracked tree, $(((pack_kib + tree_kib) / 1024)) MiB" \
       "of the 64 MiB a device call carries)"
  if [ $((pack_kib + tree_kib)) -gt $((64 * 1024)) ]; then
    echo "gpu_check: too large for a device call: the tracked tree is $((tree_kib / 1024)) MiB" \
         "(experiments/*/report the most); carry less or make the tree smaller" >&2
    return 1
  fi
}

if [ "${1:-}" = pack ]; then
  pack
  exit
fi

out="${1:-${OUT:-gpu_check_out}}"
[ $# -gt 0 ] && shift
# the packed dependencies only for a machine's own Python 3.12 with PyTorch (not inside this project's environment;
# the GPU image's own python3 lives in a virtualenv, which may be active)
if [ -f "$PACK" ] && [ "${VIRTUAL_ENV:-}" != "$REPO_ROOT/.venv" ] && \
   python3 -c 'import sys, torch; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
  site=/tmp/winnow-gpu-site
  if [ ! -f "$site/.unpacked" ] || [ "$PACK" -nt "$site/.unpacked" ]; then
    rm -rf "$site" && mkdir -p "$site"
    if command -v xz >/dev/null; then
      tar -C "$site" -xJf "$PACK"
    else  # an image without xz: Python's own lzma reads it
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$PACK" "$site"
    fi
    touch "$site/.unpacked"
  fi
  export PYTHONPATH="$REPO_ROOT:$site${PYTHONPATH:+:$PYTHONPATH}"
  export GIT_PYTHON_REFRESH=quiet  # MLflow's GitPython on a machine without git: a warning, not an import error
  PY=python3
else
  # shellcheck source=scripts/setup_env.sh
  source scripts/setup_env.sh
  PY=python
fi
export PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py --out "$out" "$@"
