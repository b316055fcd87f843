# Sourced by scripts/test.sh and scripts/serve.sh: system packages (when root), a virtualenv, the package.
# Safe to run again: it only installs what is missing. Sets VENV for the caller.
#   LIGHTABACO_VENV  where the virtualenv goes (default: .venv in the source tree)
#   PYTHON           the interpreter that creates it (default: python3; 3.11 or newer)
# bubblewrap runs the sandboxes; busybox-static and mmdebstrap make the offline sample bases, and
# mmdebstrap needs uidmap (newuidmap/newgidmap) to build the Python base as an ordinary user; xz-utils lets it
# unpack the Debian packages; docker-registry and apache2-utils (htpasswd) serve the
# registry tests; jq and curl run the README; git clones the repository (tests make fresh clones).
APT_PACKAGES="bubblewrap busybox-static mmdebstrap uidmap xz-utils docker-registry"
APT_PACKAGES="$APT_PACKAGES apache2-utils jq curl ca-certificates python3-venv git"
# Callers may ask for more (scripts/test.sh adds podman and runc, so the podman backend is tested too).
APT_PACKAGES="$APT_PACKAGES ${EXTRA_APT_PACKAGES:-}"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "lightabaco: not a Debian/Ubuntu system; install the equivalents of:$missing" >&2
  elif [ "$(id -u)" = 0 ]; then
    echo "installing system packages:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends $missing >&2
  else
    echo "lightabaco: missing system packages:$missing" >&2
    echo "run: sudo apt-get install -y$missing" >&2
    echo "(continuing: what needs them will fail with the same hint)" >&2
  fi
fi
# As an ordinary user, mmdebstrap maps the ids of a Debian tree through /etc/subuid and /etc/subgid.
if [ "$(id -u)" != 0 ]; then
  me="$(id -un)"
  for f in /etc/subuid /etc/subgid; do
    if ! grep -qE "^($me|$(id -u)):[0-9]+:[0-9]+" "$f" 2>/dev/null; then
      echo "lightabaco: $f has no range for $me (the Python sample images need one)" >&2
      echo "run: sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $me" >&2
      break
    fi
  done
fi
VENV="${LIGHTABACO_VENV:-$PWD/.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "lightabaco needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1). Set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.lightabaco-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing lightabaco and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e ".[test]" >&2
  touch "$stamp"
fi
export VENV
