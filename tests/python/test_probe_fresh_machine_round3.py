"""A new user on a fresh machine, round three (outside probe): the README's set-up scripts in an
environment that another Python set-up left behind, which rounds one and two did not try.

The probe ran the scripts of fresh clones (a `git archive` export without .git, a `--depth 1`
clone made read-only but for build/ and .venv, umask 077, LC_ALL=POSIX, HOME unset, CC/CXX=clang):
those installed and `python -m dodo.test` said OK. What failed was the environment:

- PYTHONPATH naming another dodo (a developer's checkout): the venv's python imported that one;
  setup_venv.sh said "dodo installed in .venv (0.0.9 (another checkout))", `.venv/bin/dodo` then
  stopped at "No module named 'dodo.cli'" (main_job.sh), and pytest ran against the other package.
- PYTHONHOME set: the venv's python did not start, and setup_venv.sh said to remove the venv.
- pip's `user = true` (PIP_USER=1, or `[install] user = true` in a pip.conf): every install into
  the venv stopped at "Can not perform a '--user' install".

These tests hold the fix without network or a build: setup_venv.sh is copied into a throw-away
"repository" whose .venv is a stub (its python runs the real interpreter with the venv's
site-packages appended to sys.path, as a venv does, after PYTHONPATH; its pip logs what it saw).
main_job.sh and test.sh are copied with a stub setup_venv.sh that logs the environment it got.
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
BASH = shutil.which("bash") or "/bin/bash"
HOSTILE = {
    "PYTHONHOME": "/nonexistent/python-home",
    "PIP_USER": "1",
    "PIP_TARGET": "/nonexistent/pip-target",
    "PIP_PREFIX": "/nonexistent/pip-prefix",
}


def _base_env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"),
            "LC_ALL": "C"}


def _another_dodo(tmp_path: Path) -> Path:
    other = tmp_path / "another checkout"
    (other / "dodo").mkdir(parents=True)
    (other / "dodo" / "__init__.py").write_text('__version__ = "0.0.9-another-checkout"\n')
    return other


def _stub_venv(venv: Path, log: Path) -> None:
    """bin/python: `-m pip ...` logs the environment pip would see; anything else runs this test's
    interpreter without its own site-packages (-S) and with lib/site appended to sys.path (after
    PYTHONPATH, as in a real venv)."""
    site = venv / "lib" / "site"
    (site / "dodo").mkdir(parents=True)
    (site / "dodo" / "__init__.py").write_text('__version__ = "0.1.0-in-the-venv"\n')
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = pip ]; then\n'
        f'  echo "pip $3 | PIP_USER=${{PIP_USER-unset}} PIP_TARGET=${{PIP_TARGET-unset}} '
        f'PIP_PREFIX=${{PIP_PREFIX-unset}} PYTHONHOME=${{PYTHONHOME-unset}}" >> "{log}"\n'
        "  exit 0\n"
        "fi\n"
        'if [ "$1" = -c ]; then\n'
        f'  exec "{sys.executable}" -S -c "import sys; sys.path.append(\'{site}\'); exec(sys.argv[1])" "$2"\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)


def _fake_clone(tmp_path: Path, script: str) -> Path:
    """A directory with a space in its name holding a copy of scripts/``script`` and what it sources."""
    fake = tmp_path / "fresh clone 7"
    (fake / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "_venv_environment.sh", fake / "scripts")
    shutil.copy2(ROOT / "scripts" / script, fake / "scripts" / script)
    return fake


def test_setup_venv_uses_the_venvs_dodo_whatever_the_python_environment(tmp_path):
    fake = _fake_clone(tmp_path, "setup_venv.sh")
    log = tmp_path / "pip.log"
    log.write_text("")
    _stub_venv(fake / ".venv", log)
    env = {**_base_env(tmp_path), **HOSTILE, "PYTHONPATH": str(_another_dodo(tmp_path))}
    result = subprocess.run([BASH, str(fake / "scripts" / "setup_venv.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout + result.stderr
    # the dodo reported is the venv's, not the one PYTHONPATH named
    assert "(0.1.0-in-the-venv)" in result.stdout, result.stdout + result.stderr
    assert "another-checkout" not in result.stdout
    assert "does not run" not in result.stderr  # PYTHONHOME no longer stops the venv's python
    for var in ("PYTHONPATH", "PYTHONHOME", "PIP_TARGET", "PIP_PREFIX"):
        assert f"note: {var}=" in result.stderr and "is ignored here" in result.stderr, result.stderr
    pip_calls = log.read_text().splitlines()
    # pip's --version check, the pip upgrade and the install of the repository
    assert [call.split(" |")[0] for call in pip_calls] == ["pip --version", "pip install", "pip install"], pip_calls
    for call in pip_calls:
        assert "PIP_USER=0 PIP_TARGET=unset PIP_PREFIX=unset PYTHONHOME=unset" in call, call


@pytest.mark.parametrize("script", ["main_job.sh", "test.sh"])
def test_main_job_and_test_sh_drop_another_setups_python_environment(tmp_path, script):
    """main_job.sh and test.sh run the venv's dodo and pytest after setup_venv.sh: the environment
    must be clean for those too, not only inside setup_venv.sh."""
    fake = _fake_clone(tmp_path, script)
    (fake / "scripts" / "setup_venv.sh").write_text(
        '#!/bin/sh\necho "setup_venv reached | PYTHONPATH=${PYTHONPATH-unset} PYTHONHOME=${PYTHONHOME-unset}'
        ' PIP_USER=${PIP_USER-unset} PIP_TARGET=${PIP_TARGET-unset} PIP_PREFIX=${PIP_PREFIX-unset}"\nexit 3\n')
    env = {**_base_env(tmp_path), **HOSTILE, "PYTHONPATH": str(_another_dodo(tmp_path)),
           "DODO_MAIN_JOB_DIR": str(tmp_path / "main job work")}
    result = subprocess.run([BASH, str(fake / "scripts" / script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 3, result.stdout + result.stderr
    assert ("setup_venv reached | PYTHONPATH=unset PYTHONHOME=unset PIP_USER=0 PIP_TARGET=unset "
            "PIP_PREFIX=unset") in result.stdout, result.stdout + result.stderr
    assert f"{script}: note: PYTHONPATH=" in result.stderr, result.stderr


def test_setup_venv_leaves_the_environment_alone_when_nothing_is_set(tmp_path):
    """No note where none of those variables is set (a plain fresh machine)."""
    fake = _fake_clone(tmp_path, "setup_venv.sh")
    log = tmp_path / "pip.log"
    log.write_text("")
    _stub_venv(fake / ".venv", log)
    result = subprocess.run([BASH, str(fake / "scripts" / "setup_venv.sh")], cwd=tmp_path,
                            env=_base_env(tmp_path), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note:" not in result.stderr, result.stderr
    assert "(0.1.0-in-the-venv)" in result.stdout


def test_header_script_under_umask_077_installs_headers_every_user_can_read(tmp_path):
    """cmake/install_onnxruntime_headers.sh on Debian 12 (the trixie package unpacked by hand) run by a
    root whose umask is 077: the include directory came out mode 700 and the headers 600, so another
    user's build did not find onnxruntime_c_api.h. apt-get, apt-cache and dpkg-deb are stubs (the .deb
    is a tar made here); tar, cp, mkdir, chmod are the real ones."""
    import tarfile

    fake = tmp_path / "fresh clone 7"
    (fake / "cmake").mkdir(parents=True)
    shutil.copy2(ROOT / "cmake" / "install_onnxruntime_headers.sh", fake / "cmake" / "install_onnxruntime_headers.sh")
    source = tmp_path / "deb contents"
    (source / "usr" / "include" / "onnxruntime" / "core").mkdir(parents=True)
    (source / "usr" / "include" / "onnxruntime" / "onnxruntime_c_api.h").write_text("/* C API */\n")
    (source / "usr" / "include" / "onnxruntime" / "core" / "session.h").write_text("/* core */\n")
    for path in [source, *source.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    fsys = tmp_path / "fsys.tar"
    with tarfile.open(fsys, "w") as archive:
        archive.add(source / "usr", arcname="./usr")
    stubs = tmp_path / "stub bin"
    stubs.mkdir()
    for tool in ("bash", "tar", "mkdir", "cp", "rm", "mktemp", "awk", "cat", "chmod", "dirname"):
        real = shutil.which(tool)
        assert real, tool
        (stubs / tool).symlink_to(real)
    for name, body in {
        "apt-cache": "exit 1\n",  # Debian 12: no libonnxruntime-dev in the configured suites
        "apt-get": 'for a; do case "$a" in indextargets) echo "http://deb.example/debian bookworm"; exit 0 ;;\n'
                   '  download) : > libonnxruntime-dev_1.0_amd64.deb; exit 0 ;; esac; done\nexit 0\n',
        "dpkg-deb": f'cat "{fsys}"\n',
    }.items():
        (stubs / name).write_text("#!/bin/sh\n" + body)
        (stubs / name).chmod(0o755)
    prefix = tmp_path / "prefix"
    result = subprocess.run(
        [BASH, "-c", 'umask 077; exec bash "$0" "$1"', str(fake / "cmake" / "install_onnxruntime_headers.sh"),
         str(prefix)], env={"PATH": str(stubs), "HOME": str(tmp_path / "home")}, cwd=tmp_path,
        capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout + result.stderr
    installed = prefix / "include" / "onnxruntime"
    assert (installed / "onnxruntime_c_api.h").read_text() == "/* C API */\n"
    for path in [prefix / "include", installed, *installed.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        wanted = 0o005 if path.is_dir() else 0o004  # others may read (and enter) it
        assert mode & wanted == wanted, f"{path} has mode {oct(mode)}"
