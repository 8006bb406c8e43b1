#!/usr/bin/env bash
# One-command set-up for hotadd on Debian 12 (idempotent), then one action:
#   ./setup.sh run  [hotadd run options]   set up, build the reference guest, run the default scenario
#   ./setup.sh test [pytest options]       set up, build the reference guest, run lint + type checks + tests
#   ./setup.sh install                     set up only
# Installs missing Debian packages (as root, or through sudo), a virtualenv in .venv with the
# package and its test tools, and the reference guest in the per-user cache.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

action="${1:-install}"
[ $# -gt 0 ] && shift

APT_PACKAGES=(
  # QEMU + libvirt (the QEMU driver runs embedded in our process: no daemon needed; the
  # daemon package is there for the libvirt-qemu user the embedded driver needs as root)
  qemu-system-x86 qemu-utils libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients
  libxml2-utils ovmf
  # building libvirt-python from PyPI
  libvirt-dev pkg-config gcc make python3-venv python3-dev
  # the reference guest: kernel headers for the probe module, busybox, an SSH server, initramfs tools
  linux-headers-amd64 busybox-static dropbear-bin cpio kmod zstd
  # the Windows path: provisioning ISOs, reading Microsoft's UDF ISOs and install.wim,
  # stand-in WIMs for the tests (wimtools), type-checking the driver's kernel API use
  xorriso wimtools 7zip mingw-w64
  # headless browser for looking at the HTML report in tests
  chromium
  # the tests' second libvirt host, reached over SSH (tests/support/lab_host.py)
  openssh-server
)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The virtualenv uses Debian's python3 (python3-venv/-dev come from apt above).
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating virtualenv .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.hotadd-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing hotadd and its test tools into .venv" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

# The reference guest (kernel + initramfs + probe module + SSH key), rebuilt only when inputs change.
.venv/bin/hotadd guest build

case "$action" in
  install) ;;
  run) exec .venv/bin/hotadd run "$@" ;;
  test)
    .venv/bin/ruff check harness tests
    .venv/bin/mypy
    exec .venv/bin/pytest "$@"
    ;;
  *) echo "usage: $0 {run|test|install} [args...]" >&2; exit 2 ;;
esac
