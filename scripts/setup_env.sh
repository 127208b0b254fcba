# Sourced by quickstart.sh and test.sh: make a ready Python environment, idempotently.
#   - uses the active virtualenv if there is one, else creates/uses .venv in the repo
#   - installs a CPU build of torch where there is no NVIDIA GPU (never a multi-GB CUDA build)
#   - installs Winnow (editable) with the extras in $WINNOW_EXTRAS, skipping pip when nothing changed
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  PY="${PYTHON:-python3}"
  "$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Winnow needs Python >= 3.10"' || exit 1
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || { apt-get install -y python3-venv >/dev/null 2>&1 && "$PY" -m venv .venv; }
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

extras="${WINNOW_EXTRAS:-}"
stamp="$VIRTUAL_ENV/.winnow-setup"
want="$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16) extras=[$extras]"
if [ ! -f "$stamp" ] || ! grep -qF "$want" "$stamp"; then
  echo "winnow: setting up $VIRTUAL_ENV (once; later runs skip this)" >&2
  # pip warns about every index folder of this machine's pip config that lacks a package: not news.
  pip_q() { python -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored" >&2); }
  if ! python -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      pip_q torch                       # the registry's default build carries CUDA
    else
      # CPU build: from the local wheel folder where pip has one (see docs), else PyTorch's CPU index.
      pip_q "torch==2.13.0" 2>/dev/null || pip_q torch --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  # compat mode: a .pth with the repo root, so conf/, hydra_plugins/ and experiments/ resolve from anywhere
  pip_q -e "$spec" --config-settings editable_mode=compat
  echo "$want" > "$stamp"
fi
