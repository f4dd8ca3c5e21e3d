# Shared by scripts/install.sh, scripts/run.sh and scripts/test.sh (sourced, not run; bash). It owns the
# set-up steps the three must do alike:
#   usbnetd_python                  the Python that builds the venv (both scripts used to choose differently)
#   usbnetd_apt_install WHO PKG...  install the Debian packages that are missing, never upgrading one that is there,
#                                   and starting no service (policy-rc.d)
#   usbnetd_keep_disabled WHO MISSING PKG UNIT...  disable the units of a package this run installed
#   usbnetd_venv WHO VENV [EXTRAS]  create the venv when it is missing or broken; pip install -e when needed
#   usbnetd_link WHO VENV           put `usbnetd` on PATH (/usr/local/bin/usbnetd -> the venv's)
#   usbnetd_unpack_deb WHO PKG DIR  a Debian package's files under DIR, without installing it
# Messages go to stderr, each starting with WHO (the script's name), so stdout stays the caller's.

usbnetd_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# /usr/bin/python3, Debian's, when there is one: python3-venv (installed below) is for it, and the VM test
# layer runs the venv's Python inside the guest through a read-only view of the host's /usr. A python3 that
# comes first on PATH (pyenv, conda, /usr/local) may lack venv or live where the guest cannot see it.
usbnetd_python() {
  if [[ -x /usr/bin/python3 ]]; then
    echo /usr/bin/python3
  else
    command -v python3
  fi
}

usbnetd_missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

# PKG, or PKG=VERSION when a package built from the same source is installed: then VERSION is that one's, so
# that installing PKG upgrades nothing (udev must match the installed systemd, libsystemd0 and libudev1
# exactly; asked for without a version, apt upgrades all of them to the newest point release).
usbnetd_apt_pin() {
  local p=$1 src ver
  src=$(apt-cache show --no-all-versions "$p" 2>/dev/null | sed -n 's/^Source: \([^ ]*\).*/\1/p' | head -n 1) || true
  src=${src:-$p}
  ver=$(dpkg-query -W -f='${db:Status-Abbrev} ${source:Package} ${Version}\n' 2>/dev/null |
    awk -v s="$src" '$1 == "ii" && $2 == s { print $3; exit }') || true
  if [[ -n $ver ]] && apt-cache madison "$p" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' |
    grep -qxF -- "$ver"; then
    echo "$p=$ver"
  else
    echo "$p"
  fi
}

# Why `apt-get install PKG...` must not run: the installed packages it would upgrade, or apt's own error
# (an unknown package); empty when it may run.
usbnetd_apt_refusal() {
  local sim up
  if ! sim=$(LC_ALL=C apt-get install -s --no-upgrade --no-install-recommends "$@" 2>&1); then
    grep -m 1 '^E: ' <<<"$sim" || echo "apt-get cannot install it"
    return 0
  fi
  up=$(awk '/^Inst [^ ]+ \[/ { print $2 }' <<<"$sim" | sort -u | tr '\n' ' ')
  if [[ -n $up ]]; then echo "it would upgrade ${up% } (installed packages are never upgraded)"; fi
}

# Install what is missing of PKG..., as root, without upgrading anything installed. A package that cannot be
# installed without an upgrade (or not at all) is left out and named. Returns 1 when something stays missing.
usbnetd_apt_install() {
  local who=$1 p
  shift
  local missing=()
  mapfile -t missing < <(usbnetd_missing_packages "$@")
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "$who: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    return 1
  fi
  echo "$who: installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq >&2 || echo "$who: apt-get update failed; using the package lists there are" >&2
  local want=() ok=() refused=() why
  for p in "${missing[@]}"; do want+=("$(usbnetd_apt_pin "$p")"); done
  if [[ -z $(usbnetd_apt_refusal "${want[@]}") ]]; then
    ok=("${want[@]}")
  else  # one at a time, to install what can be
    for p in "${want[@]}"; do
      why=$(usbnetd_apt_refusal "$p")
      if [[ -z $why ]]; then ok+=("$p"); else refused+=("$p: $why"); fi
    done
  fi
  if ((${#ok[@]})); then
    # No service may start on this machine because of this install: NetworkManager, for one, is installed only
    # for the VM guest to run. invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d first, and exit
    # 101 means "action forbidden" (Debian's invoke-rc.d(8), README.policy-rc.d). One that is there already
    # (Docker images have one) is left as it is; ours goes once apt-get is done.
    local policy=${USBNETD_POLICY_RC_D:-/usr/sbin/policy-rc.d} own_policy="" rc=0
    if [[ ! -e $policy ]] && printf '#!/bin/sh\n# written by usbnetd %s for one apt-get install\nexit 101\n' "$who" \
      >"$policy" 2>/dev/null && chmod 755 "$policy"; then
      own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-upgrade --no-install-recommends "${ok[@]}" >&2 || rc=$?
    if [[ -n $own_policy ]]; then rm -f "$policy"; fi
    ((rc == 0)) || return 1
  fi
  local r
  for r in "${refused[@]}"; do
    echo "$who: not installed: $r" >&2
  done
  ((${#refused[@]} == 0))
}

# Services of PKG that this run installed (it was missing before: MISSING is usbnetd_missing_packages' output
# from before the install) are disabled, so they do not start at the next boot either; they are there only for
# the VM guest. A package that was installed before is left as the administrator set it up.
usbnetd_keep_disabled() {
  local who=$1 missing=$2 pkg=$3
  shift 3
  [[ " $(tr '\n' ' ' <<<"$missing") " == *" $pkg "* ]] || return 0
  [[ -z $(usbnetd_missing_packages "$pkg") ]] || return 0
  command -v systemctl >/dev/null || return 0
  if systemctl disable --quiet "$@" >/dev/null 2>&1; then
    echo "$who: $pkg was installed for the VM guest only: disabled $*" >&2
  fi
}

# What a pip install -e depends on: when none of it changed since the last one into this venv, it is skipped.
# (A reinstall rewrites the venv under anyone using it, and builds the native extension again.)
usbnetd_install_stamp() {
  local venv=$1 extras=$2
  {
    "$venv/bin/python" -c 'import sys; print(sys.version)'
    echo "extras=$extras repo=$usbnetd_repo"
    # the optional C extension is built by pip when a compiler and Python's headers are there: once they
    # appear (test.sh installs them), the next install must build it
    echo "cc=$(command -v gcc cc || true)"
    "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null |
      xargs -r -I{} sh -c 'test -f {}/Python.h && echo headers=yes' || true
    cat "$usbnetd_repo/pyproject.toml" "$usbnetd_repo/setup.py" 2>/dev/null || true
    find "$usbnetd_repo/src" -name '*.c' -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum
  } | sha256sum | cut -d' ' -f1
}

# Whether the last pip install into VENV is current for EXTRAS. With no extras, an install with any extras
# that is current will do (scripts/test.sh installs '.[test]'; run.sh after it needs nothing more).
usbnetd_installed() {
  local venv=$1 extras=$2 f e
  "$venv/bin/python" -c 'import usbnetd' 2>/dev/null || return 1
  for f in "$venv"/.usbnetd-installed*; do
    [[ -f $f ]] || continue
    e=${f##*/.usbnetd-installed}
    e=${e#-}
    [[ -z $extras || $e == "$extras" ]] || continue
    [[ $(cat "$f") == $(usbnetd_install_stamp "$venv" "$e") ]] && return 0
  done
  return 1
}

usbnetd_venv() {
  local who=$1 venv=$2 extras=${3:-}
  if ! "$venv/bin/python" -c '' 2>/dev/null; then
    local python
    python=$(usbnetd_python)
    echo "$who: creating the venv $venv with $python" >&2
    "$python" -m venv --clear "$venv" >&2
  fi
  if usbnetd_installed "$venv" "$extras"; then
    return 0
  fi
  local stamp_file="$venv/.usbnetd-installed${extras:+-$extras}" stamp
  stamp=$(usbnetd_install_stamp "$venv" "$extras")
  local spec=$usbnetd_repo
  [[ -n $extras ]] && spec="$usbnetd_repo[$extras]"
  echo "$who: pip install -e '$spec' into $venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec" >&2 || return 1
  echo "$stamp" >"$stamp_file"
}

# /usr/local/bin/usbnetd -> VENV/bin/usbnetd, so that `usbnetd ...` works as the README shows (root's PATH and
# sudo's secure_path have /usr/local/bin; the systemd unit runs /usr/local/bin/usbnetd). USBNETD_LINK moves it;
# USBNETD_LINK= (empty) skips it. An existing link into another venv, or a file, is left alone and named: it
# may be an installation that systemd runs (docs/operating.md).
usbnetd_link() {
  local who=$1 venv=$2
  local link=${USBNETD_LINK-/usr/local/bin/usbnetd} target="$venv/bin/usbnetd"
  [[ -n $link ]] || return 0
  if [[ -L $link && $(readlink -f "$link") == $(readlink -f "$target") ]]; then
    return 0
  fi
  if [[ -e $link ]]; then  # a dangling link (its venv was removed) is replaced below
    echo "$who: $link is $(if [[ -L $link ]]; then echo "a link to $(readlink "$link")"; else echo "a file"; fi)," \
      "left alone; this checkout's command is $target" >&2
    return 0
  fi
  if ! mkdir -p "$(dirname "$link")" 2>/dev/null || ! ln -sfn "$target" "$link" 2>/dev/null; then
    echo "$who: cannot create $link (not root?); run $target, or: ln -s $target $link" >&2
    return 0
  fi
  echo "$who: $link -> $target" >&2
}

# The files of Debian package PKG under DIR (apt-get download, dpkg-deb -x): nothing is installed, no
# maintainer script runs, no service starts. Reused while DIR/.unpacked exists.
usbnetd_unpack_deb() {
  local who=$1 pkg=$2 dir=$3
  [[ -f $dir/.unpacked ]] && return 0
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/usbnetd-deb.XXXXXX") && chmod 755 "$tmp" || return 1  # apt's _apt user writes there
  if ! (cd "$tmp" && apt-get download -q "$pkg" >&2); then
    [[ $(id -u) -eq 0 ]] && apt-get update -qq >&2
    (cd "$tmp" && apt-get download -q "$pkg" >&2) || {
      echo "$who: cannot download the Debian package $pkg" >&2
      rm -rf "$tmp"
      return 1
    }
  fi
  mkdir -p "$dir" && dpkg-deb -x "$tmp"/*.deb "$dir" && touch "$dir/.unpacked"
  local rc=$?
  rm -rf "$tmp"
  return $rc
}
