# Shared by serve.sh and test.sh: Debian packages and the project's virtual environment.
# shellcheck shell=bash

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "probelink: need root (or sudo) to run: $*" >&2; return 1; fi
}

# apt_install PKG...: install the Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "probelink: installing Debian packages: ${missing[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ensure_venv EXTRAS: a .venv with probelink installed (editable) and the given extras.
ensure_venv() {
  local extras="$1"
  # A minimal Debian image may have no Python at all.
  if ! command -v python3 >/dev/null; then apt_install python3 python3-venv; fi
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "probelink: Python 3.11 or newer is required as python3" >&2; return 1
  fi
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then apt_install python3-venv; fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # The install is editable: code changes need none. It is redone only when what it installs
  # from changes (pyproject.toml, the extras, the Python), so a restart takes seconds.
  # The stamp holds the hash of what was installed from and the extras installed with it
  # (an install with the test extras also serves).
  local stamp=".venv/.probelink-installed" want had
  want="$(cat pyproject.toml <(.venv/bin/python -VV) | sha256sum | cut -d' ' -f1)"
  had="$(cat "$stamp" 2>/dev/null || true)"
  if [ -x .venv/bin/probelink ]; then
    [ "$had" = "$want $extras" ] && return 0
    [ -z "$extras" ] && [ "$had" = "$want [test]" ] && return 0
  fi
  echo "probelink: installing into .venv (first run, or pyproject.toml changed)" >&2
  rm -f "$stamp"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
  echo "$want $extras" >"$stamp"
}
