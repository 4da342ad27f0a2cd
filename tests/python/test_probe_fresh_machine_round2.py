"""A new user on a fresh machine, round two (outside probe): the README's set-up scripts run as a new
user runs them, in the ways the deployment (section 50) and documentation (section 55) probes did not.

The probe ran the scripts of a fresh clone; these tests hold what it found without network, root, a
build or a package index: each script is copied into a throw-away "repository" (so that what it calls
next, setup_venv.sh or the header script, is a stub that says it was reached), and the system
commands it uses (id, dpkg-query, apt-get, sudo) are stubs on a PATH that holds nothing else.

- `sh scripts/X.sh` (dash): every script stopped at its first line, "set: Illegal option -o pipefail";
  now bash runs it.
- scripts/install_system_deps.sh as a user without sudo on a machine that has everything: "sudo:
  command not found", exit 127; now nothing is run as root unless something is missing, and where it
  is, one message says what and how.
- the same as root with a PATH without the sbin directories (`su` without `-`): dpkg refuses every
  install ("2 expected programs not found in PATH"); the script now adds them.
- scripts/setup_venv.sh after `python3 -m venv` was stopped by Ctrl-C while ensurepip ran (a venv
  without pip): every later run stopped at "No module named pip"; now the venv is completed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 120
HEADER = Path("/usr/include/onnxruntime/onnxruntime_c_api.h")
BASH = shutil.which("bash") or "/bin/bash"


def _fake_repository(tmp_path: Path, *scripts: str) -> Path:
    """A directory with a space in its name holding copies of the named scripts (paths relative to the
    repository root), the rest stubbed where a test puts stubs."""
    fake = tmp_path / "fresh clone 6"
    for script in scripts:
        (fake / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / script, fake / script)
    if any(script.startswith("scripts/") for script in scripts):  # what the set-up scripts source
        shutil.copy2(ROOT / "scripts" / "_venv_environment.sh", fake / "scripts" / "_venv_environment.sh")
    return fake


def _write_stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _stub_path(tmp_path: Path, *, sudo: bool) -> Path:
    """A PATH directory with the real bash, grep, dirname, env and cat, and stubs of id, dpkg-query,
    apt-get (and sudo when asked) that log to $STUB_LOG."""
    stubs = tmp_path / "stub bin"
    stubs.mkdir()
    for tool in ("bash", "grep", "dirname", "env", "cat"):
        real = shutil.which(tool)
        assert real, tool
        (stubs / tool).symlink_to(real)
    _write_stub(stubs / "id", 'case "$1" in -u) echo "$STUB_UID" ;; -un) echo probeuser ;; *) echo "uid=$STUB_UID" ;; esac\n')
    _write_stub(stubs / "dpkg-query",
                'for a; do last="$a"; done\nfor p in $STUB_MISSING; do [ "$p" = "$last" ] && exit 1; done\n'
                'printf "install ok installed"\n')
    _write_stub(stubs / "apt-get",
                'echo "apt-get $* | PATH=$PATH | DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-}" >> "$STUB_LOG"\n')
    if sudo:
        # as sudo's env_reset: the caller's variables (DEBIAN_FRONTEND too) do not reach the command
        _write_stub(stubs / "sudo", 'echo "sudo $1" >> "$STUB_LOG"\n'
                    'exec env -i PATH="$PATH" STUB_LOG="$STUB_LOG" STUB_UID=0 "$@"\n')
    return stubs


def _run_install_system_deps(tmp_path: Path, *, uid: int, missing: str, sudo: bool, shell: str = BASH):
    fake = _fake_repository(tmp_path, "scripts/install_system_deps.sh")
    _write_stub(fake / "cmake" / "install_onnxruntime_headers.sh", 'echo "headers script" >> "$STUB_LOG"\n')
    stubs = _stub_path(tmp_path, sudo=sudo)
    log = tmp_path / "stub.log"
    log.write_text("")
    env = {"PATH": str(stubs), "STUB_UID": str(uid), "STUB_MISSING": missing, "STUB_LOG": str(log),
           "HOME": str(tmp_path / "missing home")}
    result = subprocess.run([shell, str(fake / "scripts" / "install_system_deps.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    return result, log.read_text().splitlines()


def test_install_system_deps_needs_no_sudo_where_nothing_is_missing(tmp_path):
    result, log = _run_install_system_deps(tmp_path, uid=1000, missing="", sudo=False)
    assert "command not found" not in result.stderr, result.stderr
    if HEADER.is_file():
        assert result.returncode == 0, result.stderr
        assert log == [], log
        assert "ONNX Runtime headers already present" in result.stdout
    else:  # the header is missing on this machine: that needs root, said in one message
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "no sudo" in result.stderr and "ONNX Runtime's C headers" in result.stderr, result.stderr
        assert log == [], log


def test_install_system_deps_without_root_or_sudo_says_what_is_missing(tmp_path):
    result, log = _run_install_system_deps(tmp_path, uid=1000, missing="g++ gfortran", sudo=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "command not found" not in result.stderr
    assert "installing g++ gfortran" in result.stderr and "no sudo" in result.stderr, result.stderr
    assert "run this script as root" in result.stderr
    assert log == [], log  # nothing was tried


def test_install_system_deps_with_sudo_installs_the_missing_packages(tmp_path):
    result, log = _run_install_system_deps(tmp_path, uid=1000, missing="gfortran", sudo=True)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert log[0] == "sudo apt-get" and log[1].startswith("apt-get update")
    assert log[2] == "sudo apt-get" and log[3].startswith("apt-get install -y -qq gfortran |"), log
    assert log[4:] == ([] if HEADER.is_file() else ["sudo bash", "headers script"]), log


def test_install_system_deps_as_root_with_a_path_without_sbin(tmp_path):
    """`su` without `-`: root's PATH lacks /usr/sbin and /sbin, where dpkg finds ldconfig and
    start-stop-daemon; apt-get install then failed for every package."""
    result, log = _run_install_system_deps(tmp_path, uid=0, missing="gfortran pkg-config", sudo=False)
    assert result.returncode == 0, (result.stdout, result.stderr)
    installs = [line for line in log if line.startswith("apt-get install")]
    assert len(installs) == 1 and installs[0].startswith("apt-get install -y -qq gfortran pkg-config |"), log
    path = installs[0].split("| PATH=")[1].split(" |")[0].split(":")
    assert "/usr/sbin" in path and "/sbin" in path and "/usr/local/sbin" in path, path
    assert path[0] == str(tmp_path / "stub bin"), path  # added after the user's PATH, not before
    assert installs[0].endswith("DEBIAN_FRONTEND=noninteractive"), installs


@pytest.mark.parametrize("script", ["scripts/test.sh", "scripts/main_job.sh"])
def test_scripts_run_by_sh_from_another_directory(tmp_path, script):
    """`sh scripts/test.sh` from $HOME: bash runs it; it finds its repository from its own path."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    fake = _fake_repository(tmp_path, script)
    _write_stub(fake / "scripts" / "setup_venv.sh", 'echo "setup_venv reached: $* in $(pwd)"\nexit 3\n')
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    result = subprocess.run([sh, str(fake / script)], cwd=elsewhere, capture_output=True, text=True,
                            timeout=HANG_GUARD_S, env={**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert "Illegal option" not in result.stderr, result.stderr
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert f"setup_venv reached: " in result.stdout and f" in {fake}" in result.stdout, result.stdout


def test_setup_venv_and_header_script_run_by_sh(tmp_path):
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    fake = _fake_repository(tmp_path, "scripts/setup_venv.sh", "cmake/install_onnxruntime_headers.sh")
    venv = tmp_path / "stub venv"
    log = tmp_path / "python.log"
    _write_stub(venv / "bin" / "python",
                f'echo "$*" >> "{log}"\ncase "$*" in "-c import dodo"*) echo 0.1.0 ;; esac\nexit 0\n')
    env = {**os.environ, "DODO_VENV": str(venv)}
    result = subprocess.run([sh, str(fake / "scripts" / "setup_venv.sh"), "test"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert f"dodo installed in {venv} (0.1.0)" in result.stdout
    assert f"-m pip install --quiet {fake}[test]" in log.read_text().splitlines()
    prefix = tmp_path / "prefix"
    (prefix / "include" / "onnxruntime").mkdir(parents=True)
    (prefix / "include" / "onnxruntime" / "onnxruntime_c_api.h").write_text("/* stub */\n")
    result = subprocess.run([sh, str(fake / "cmake" / "install_onnxruntime_headers.sh"), str(prefix)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0 and "already present" in result.stdout, (result.stdout, result.stderr)


def test_setup_venv_completes_a_venv_left_without_pip(tmp_path):
    """Ctrl-C while `python3 -m venv` runs ensurepip leaves bin/python without pip: the next run
    completes the venv instead of stopping at "No module named pip" (no network: the package
    index is switched off, and the fake repository is no project, so pip stops there)."""
    pytest.importorskip("ensurepip")
    fake = _fake_repository(tmp_path, "scripts/setup_venv.sh")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=HANG_GUARD_S)
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True).returncode != 0
    env = {**os.environ, "DODO_VENV": str(venv), "PYTHON": sys.executable, "PIP_CONFIG_FILE": os.devnull,
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run([BASH, str(fake / "scripts" / "setup_venv.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert "No module named pip" not in result.stderr, result.stderr
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"],
                          capture_output=True).returncode == 0
    # the run went on to the install, which stops at the fake repository (not a Python project)
    assert "pyproject.toml" in result.stderr or "not installable" in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["fails", "dangling link"])
def test_setup_venv_leaves_a_venv_whose_python_does_not_run(tmp_path, kind):
    """A venv of another machine, or whose interpreter was removed (bin/python a dangling link):
    one message and the directory left as it is (before: the pip step's error, or venv's
    "[Errno 2] No such file or directory: .../bin/python3")."""
    fake = _fake_repository(tmp_path, "scripts/setup_venv.sh")
    venv = tmp_path / ".venv"
    if kind == "fails":
        _write_stub(venv / "bin" / "python", "exit 126\n")
    else:
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(tmp_path / "removed" / "python3.9")
        (venv / "bin" / "python3").symlink_to("python")
    (venv / "keep.txt").write_text("the user's\n")
    result = subprocess.run([BASH, str(fake / "scripts" / "setup_venv.sh")], cwd=tmp_path,
                            env={**os.environ, "DODO_VENV": str(venv), "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"{venv}/bin/python does not run" in result.stderr and "DODO_VENV" in result.stderr, result.stderr
    assert (venv / "keep.txt").read_text() == "the user's\n"
    if kind == "fails":
        assert (venv / "bin" / "python").read_text() == "#!/bin/sh\nexit 126\n"
    else:
        assert os.readlink(venv / "bin" / "python") == str(tmp_path / "removed" / "python3.9")
