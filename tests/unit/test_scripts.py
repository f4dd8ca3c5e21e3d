"""The set-up scripts (scripts/lib.sh, install.sh, test.sh) without touching the machine: apt, dpkg and pip are
stood in for by fakes on PATH that record what they were asked, and the venv is a fake one.

What they must do: install only the Debian packages that are missing and never upgrade one that is installed
(installing udev used to upgrade systemd, libsystemd0, libudev1 and five more); put `usbnetd` on PATH without
taking over a link that points elsewhere; build the venv with the same Python from both scripts; and the docs
list what the test command installs. run.sh itself is run for real in tests/integration/test_cli_scripts.py.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"

# The machine the fakes describe: systemd 252.1 installed, udev (same source) and ethtool missing. udev is in
# the archive at 252.1 and at 252.2; unpinned, apt would take 252.2 and upgrade systemd's packages with it.
INSTALLED = {"systemd": "252.1-1", "libsystemd0": "252.1-1", "libudev1": "252.1-1", "python3": "3.11.2-1"}
SOURCE = {"systemd": "systemd", "libsystemd0": "systemd", "libudev1": "systemd", "udev": "systemd"}

FAKES = {
    "dpkg-query": r"""#!/bin/bash
echo "dpkg-query $*" >>"$FAKE_LOG"
fmt=$2; pkg=${3:-}
if [[ $fmt == *'source:Package'* ]]; then
  while read -r p s v; do echo "ii  $s $v"; done <"$FAKE_DIR/installed"
  exit 0
fi
while read -r p s v; do
  if [[ $p == "$pkg" ]]; then echo -n "install ok installed"; exit 0; fi
done <"$FAKE_DIR/installed"
exit 1
""",
    "apt-cache": r"""#!/bin/bash
echo "apt-cache $*" >>"$FAKE_LOG"
case $1 in
  show) [[ $3 == udev || $3 == systemd ]] && { echo "Package: $3"; echo "Source: systemd"; echo "Version: 252.2-1"; }
        [[ $3 == ethtool ]] && { echo "Package: ethtool"; echo "Version: 6.1-1"; }
        [[ $3 == udev || $3 == systemd || $3 == ethtool ]] || exit 100 ;;  # as apt-cache does: no such package
  madison) [[ $2 == udev ]] && { echo "      udev | 252.2-1 | http://deb.debian.org/debian bookworm/main Packages";
                                 echo "      udev | 252.1-1 | http://deb.debian.org/debian bookworm/main Packages"; } ;;
esac
exit 0
""",
    # -s prints what apt would do; unpinned udev (or any package named in $FAKE_UPGRADES) upgrades installed ones
    "apt-get": r"""#!/bin/bash
echo "apt-get $*" >>"$FAKE_LOG"
[[ $1 == update ]] && exit 0
if [[ $1 == install && " $* " != *" -s "* ]]; then  # what a maintainer script's invoke-rc.d would be told
  if [[ -x $USBNETD_POLICY_RC_D ]]; then "$USBNETD_POLICY_RC_D"; echo "POLICY exit $?" >>"$FAKE_LOG"
  else echo "POLICY none" >>"$FAKE_LOG"; fi
fi
if [[ $1 == download ]]; then echo deb >"$2_1.0_amd64.deb"; exit 0; fi
sim=0; pkgs=()
if [[ " $* " == *" nosuch "* ]]; then echo "E: Unable to locate package nosuch" >&2; exit 100; fi
for a in "$@"; do
  case $a in -s) sim=1 ;; -*|install) ;; *) pkgs+=("$a") ;; esac
done
for p in "${pkgs[@]}"; do
  if [[ $p == udev ]]; then
    for u in systemd libsystemd0 libudev1; do
      echo "Inst $u [252.1-1] (252.2-1 Debian:12/stable [amd64])"
      ((sim)) || echo "UPGRADED $u" >>"$FAKE_LOG"
    done
  fi
  if [[ " ${FAKE_UPGRADES:-} " == *" ${p%%=*} "* ]]; then
    echo "Inst libc6 [2.36-9] (2.36-10 Debian:12/stable [amd64])"
    ((sim)) || echo "UPGRADED libc6" >>"$FAKE_LOG"
  fi
  echo "Inst ${p%%=*} (${p#*=} Debian:12/stable [amd64])"
done
exit 0
""",
    "dpkg-deb": '#!/bin/bash\necho "dpkg-deb $*" >>"$FAKE_LOG"\nmkdir -p "$3/usr/bin"\n',
    "id": '#!/bin/bash\necho 0\n',
}
FAKE_VENV_PYTHON = '#!/bin/bash\necho "venv-python $*" >>"$FAKE_LOG"\nexit 0\n'


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def machine(tmp_path):
    """A fake Debian machine: the fakes on PATH, a venv that exists, and a log of every call."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, text in FAKES.items():
        executable(fake_bin / name, text)
    (tmp_path / "installed").write_text("".join(f"{p} {SOURCE.get(p, p)} {v}\n" for p, v in INSTALLED.items()))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "pip", "ruff", "usbnetd"):
        executable(venv / "bin" / name, FAKE_VENV_PYTHON)
    log = tmp_path / "log"
    log.write_text("")
    env = dict(os.environ, PATH=f"{fake_bin}:/usr/bin:/bin", FAKE_LOG=str(log), FAKE_DIR=str(tmp_path),
               USBNETD_VENV=str(venv), USBNETD_LINK="", XDG_CACHE_HOME=str(tmp_path / "cache"),
               USBNETD_POLICY_RC_D=str(tmp_path / "policy-rc.d"))
    return tmp_path, env, log


def calls(log: Path, prefix: str) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if ln.startswith(prefix)]


def test_test_sh_installs_what_is_missing_and_upgrades_nothing(machine):
    tmp, env, log = machine
    r = subprocess.run(["bash", str(SCRIPTS / "test.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    installs = [c for c in calls(log, "apt-get install") if " -s " not in f" {c} "]
    assert installs, log.read_text()
    for c in installs:
        words = c.split()
        assert "--no-upgrade" in words, c
        assert "udev" not in words, f"udev asked for unpinned: {c}"
    assert any("udev=252.1-1" in c.split() for c in installs), installs  # the installed systemd's version
    assert not calls(log, "UPGRADED"), log.read_text()
    installed_pkgs = {w.split("=")[0] for c in installs for w in c.split()[2:] if not w.startswith("-")}
    assert installed_pkgs >= {"udev", "ethtool"} and not installed_pkgs & set(INSTALLED), installs


def test_a_package_that_would_upgrade_others_is_left_out_and_named(machine):
    tmp, env, log = machine
    env["FAKE_UPGRADES"] = "ethtool"
    r = subprocess.run(["bash", str(SCRIPTS / "test.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr  # test.sh goes on: the tests say what they miss
    assert ("not installed: ethtool: it would upgrade libc6 (installed packages are never upgraded)"
            in r.stderr), r.stderr
    assert not calls(log, "UPGRADED"), log.read_text()
    installs = [c for c in calls(log, "apt-get install") if " -s " not in f" {c} "]
    assert installs and all("ethtool" not in c for c in installs), installs


def test_a_package_apt_does_not_know_is_named_and_the_others_installed(machine):
    tmp, env, log = machine
    script = f'source "{SCRIPTS}/lib.sh" && set -euo pipefail && usbnetd_apt_install t nosuch ethtool'
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r
    assert "t: not installed: nosuch: E: Unable to locate package nosuch" in r.stderr, r.stderr
    installs = [c for c in calls(log, "apt-get install") if " -s " not in f" {c} "]
    assert installs == ["apt-get install -y -q --no-upgrade --no-install-recommends ethtool"], installs


def test_no_service_starts_while_packages_install(machine):
    """policy-rc.d forbids every start (exit 101) for the length of apt-get install, and goes after it."""
    tmp, env, log = machine
    r = subprocess.run(["bash", "-c", f'source "{SCRIPTS}/lib.sh" && usbnetd_apt_install t ethtool'],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert calls(log, "POLICY") == ["POLICY exit 101"], log.read_text()
    assert not (tmp / "policy-rc.d").exists()


def test_a_policy_rc_d_that_is_there_is_left_alone(machine):
    tmp, env, log = machine
    executable(tmp / "policy-rc.d", "#!/bin/sh\nexit 104\n")
    r = subprocess.run(["bash", "-c", f'source "{SCRIPTS}/lib.sh" && usbnetd_apt_install t ethtool'],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert calls(log, "POLICY") == ["POLICY exit 104"], log.read_text()
    assert (tmp / "policy-rc.d").read_text() == "#!/bin/sh\nexit 104\n"


def test_nothing_missing_means_no_apt_at_all(machine):
    tmp, env, log = machine
    r = subprocess.run(["bash", "-c", f'source "{SCRIPTS}/lib.sh" && usbnetd_apt_install t systemd libudev1'],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not calls(log, "apt-get"), log.read_text()


# ------------------------------------------------------------------------------------------------ usbnetd on PATH


def install(env: dict, link: Path) -> subprocess.CompletedProcess:
    env = dict(env, USBNETD_LINK=str(link))
    return subprocess.run(["bash", str(SCRIPTS / "install.sh")], env=env, capture_output=True, text=True,
                          timeout=120)


def test_install_links_usbnetd_where_path_finds_it(machine):
    tmp, env, log = machine
    link = tmp / "usr-local-bin" / "usbnetd"
    r = install(env, link)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == env["USBNETD_VENV"], "the venv's path stays the last line"
    assert os.readlink(link) == f"{env['USBNETD_VENV']}/bin/usbnetd"
    assert f"{link} -> " in r.stderr
    # on PATH, `usbnetd ...` is the venv's command
    r = subprocess.run(["bash", "-c", "usbnetd list"], env=dict(env, PATH=f"{link.parent}:/usr/bin:/bin"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "venv-python list" in log.read_text(), r.stderr


def test_install_leaves_another_usbnetd_alone_and_replaces_a_dangling_link(machine):
    tmp, env, log = machine
    link = tmp / "usr-local-bin" / "usbnetd"
    link.parent.mkdir()
    other = tmp / "opt-venv-usbnetd"
    other.write_text("#!/bin/sh\n")
    link.symlink_to(other)
    r = install(env, link)
    assert r.returncode == 0 and os.readlink(link) == str(other), r.stderr
    assert "left alone" in r.stderr and f"{env['USBNETD_VENV']}/bin/usbnetd" in r.stderr
    other.unlink()  # its venv is gone: the link now points nowhere
    r = install(env, link)
    assert r.returncode == 0 and os.readlink(link) == f"{env['USBNETD_VENV']}/bin/usbnetd", r.stderr


def test_pip_runs_again_only_when_something_it_depends_on_changed(machine):
    tmp, env, log = machine
    link = tmp / "l" / "usbnetd"
    install(env, link)
    install(env, link)
    assert len([c for c in calls(log, "venv-python") if "pip install" in c]) == 1, log.read_text()


# ------------------------------------------------------------------------------------------------ one Python


def test_the_venv_is_made_by_one_helper_with_the_system_python(tmp_path):
    fake = tmp_path / "python3"
    executable(fake, "#!/bin/sh\nexit 1\n")  # a python3 that comes first on PATH (pyenv, conda, /usr/local)
    r = subprocess.run(["bash", "-c", f'source "{SCRIPTS}/lib.sh" && usbnetd_python'], capture_output=True,
                       text=True, env=dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin"), timeout=60)
    assert r.stdout.strip() == ("/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else str(fake))
    makers = sorted(p.name for p in SCRIPTS.glob("*.sh") if re.search(r"-m venv\b", p.read_text()))
    assert makers == ["lib.sh"], f"only lib.sh may create the venv: {makers}"
    for script in ("install.sh", "test.sh"):
        text = (SCRIPTS / script).read_text()
        assert re.search(r"^source .*lib\.sh", text, re.M) and "usbnetd_venv " in text, script
    assert '"$here/install.sh"' in (SCRIPTS / "run.sh").read_text()


# ------------------------------------------------------------------------------------------------ docs


def package_list() -> list[str]:
    text = (SCRIPTS / "test.sh").read_text()
    block = re.search(r"^apt_packages=\((.*?)\)", text, re.M | re.S).group(1)
    return block.split()


@pytest.mark.parametrize("doc", ["README.md", "docs/testing.md"])
def test_the_docs_list_what_the_test_command_installs(doc):
    text = (REPO / doc).read_text()
    m = re.search(r"`(python3 python3-venv [^`]*)`", text, re.S)
    assert m, f"{doc} does not list the test command's Debian packages"
    assert m.group(1).split() == package_list()
    assert "prometheus-node-exporter" in text and "--no-upgrade" in text
