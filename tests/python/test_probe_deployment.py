"""Deployment probe (outside probe, read-only install, unprivileged user): docs/reliability_python.md
section 50.

A cluster administrator installs dodo into a venv that users cannot write; a user runs it with a bare
environment (no HOME, TMPDIR naming a missing directory, LANG=C LC_ALL=POSIX) from a directory whose
name has spaces and non-ASCII letters, and builds a C host against the installed C API. The probe ran
that with a wheel (`pip wheel`, a fresh venv made read-only, a `useradd` user, `unshare -n`); these
tests hold the same properties without building a wheel: the installed package (the editable
install's Python files, compiled core, lib/ and include/) is copied into a directory whose path has
spaces and non-ASCII letters, made read-only (chmod a-w), and run from there with ``python -S``
(no .pth files, so the editable finder cannot send `import dodo` back to the source tree). Every test
checks that nothing was created, changed or removed inside the copy (Python's own bytecode caches
are switched off with PYTHONDONTWRITEBYTECODE: Python skips them silently where it cannot write, so a
new file there is the package's own). Run as root, the children drop to uid 65534 where the
interpreter is reachable by that user; otherwise (an interpreter under /root) root's permissions do
not refuse writes, and the unchanged tree is what catches a write.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import dodo
from dodo import _closure

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 300


def _tree(directory: Path) -> dict:
    """Every path under ``directory`` with its type, size and modification time."""
    found = {}
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(directory))] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns)
    return found


def _set_writable(directory: Path, writable: bool) -> None:
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _installed_package_copy(destination: Path) -> Path:
    """A copy of the installed dodo (Python files, compiled core, C API files, models) in
    ``destination/dodo``: from the installed package directory, completed with the compiled parts
    an editable install keeps in site-packages."""
    source = Path(dodo.__file__).resolve().parent
    target = destination / "dodo"
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    core = Path(dodo._core.__file__).resolve()
    if not (target / core.name).exists():
        shutil.copy2(core, target / core.name)
    installed = Path(_closure.runtime_paths()["lib_dir"]).parent
    for part in ("lib", "include"):
        if (installed / part).is_dir() and not (target / part).exists():
            shutil.copytree(installed / part, target / part, symlinks=True)
    return target


def _dependency_path() -> list[str]:
    """sys.path's site-packages entries (numpy, onnxruntime, h5py), for a ``python -S`` child."""
    return [entry for entry in sys.path
            if os.path.isdir(entry) and os.path.basename(entry) in ("site-packages", "dist-packages")]


class Deployment:
    """The read-only copy (``prefix/dodo``) and a writable working directory with an odd name."""

    def __init__(self, prefix: Path, workdir: Path):
        self.prefix, self.package, self.workdir = prefix, prefix / "dodo", workdir
        self.before = _tree(self.package)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join([str(prefix), *_dependency_path()]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C",
            "LC_ALL": "POSIX",
            "TMPDIR": str(workdir.parent / "no such tmp"),  # missing
        }  # no HOME
        self.user = self._unprivileged_user()

    def _unprivileged_user(self) -> dict:
        if os.geteuid() != 0:
            return {}
        try:
            probe = subprocess.run([sys.executable, "-S", "-c", "import numpy, onnxruntime"], env=self.env,
                                   cwd=self.workdir, user=65534, group=65534, extra_groups=[],
                                   capture_output=True, timeout=HANG_GUARD_S)
        except (OSError, subprocess.SubprocessError):
            return {}
        return {"user": 65534, "group": 65534, "extra_groups": []} if probe.returncode == 0 else {}

    def run(self, *args, program=None, env=None) -> subprocess.CompletedProcess:
        command = [program] if program else [sys.executable, "-S"]
        return subprocess.run([*command, *args], env={**self.env, **(env or {})}, cwd=self.workdir,
                              capture_output=True, text=True, errors="replace", timeout=HANG_GUARD_S,
                              **self.user)

    def assert_untouched(self) -> None:
        after = _tree(self.package)
        added = sorted(set(after) - set(self.before))
        removed = sorted(set(self.before) - set(after))
        changed = sorted(path for path in set(after) & set(self.before) if after[path] != self.before[path])
        assert not (added or removed or changed), f"the installed package was written: added {added}, " \
                                                  f"removed {removed}, changed {changed}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    base = tmp_path_factory.mktemp("deploy")
    prefix = base / "site packages é ü"
    prefix.mkdir()
    _installed_package_copy(prefix)
    workdir = base / "Résultats ünï run 1"
    workdir.mkdir()
    workdir.chmod(0o777)
    base.chmod(0o755)
    _set_writable(prefix, False)
    try:
        yield Deployment(prefix, workdir)
    finally:
        _set_writable(prefix, True)


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_the_smoke_test_runs_from_a_read_only_install_in_a_bare_environment(deployment):
    result = deployment.run("-m", "dodo.test")
    _no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"dodo {dodo.__version__}: OK" in result.stdout
    # the copy's own model, found beside the copy (not the source tree's)
    assert f"closure runtime: OK (default model {deployment.package / 'models' / 'qke_default.onnx'}" in result.stdout
    deployment.assert_untouched()


def test_commands_run_from_a_read_only_install_and_write_only_where_asked(deployment):
    version = deployment.run("-m", "dodo", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"dodo {dodo.__version__}", version.stderr
    info = deployment.run("-m", "dodo", "info")
    assert info.returncode == 0, info.stderr
    assert f"cmake_dir: {deployment.package / 'lib' / 'cmake' / 'Dodo'}" in info.stdout
    assert f"default_model: {deployment.package / 'models' / 'qke_default.onnx'}" in info.stdout
    reference = deployment.run("-m", "dodo", "reference")
    assert reference.returncode == 0 and "largest deviation from the reference outputs" in reference.stdout, \
        reference.stdout + reference.stderr
    closure = deployment.run("-c", "import dodo, numpy as np\n"
                                   "F = np.zeros((6, 4)); F[:, 0] = [1, .8, .3, .3, .3, .3]; F[0, 3] = .3; F[1, 3] = -.4\n"
                                   "out = dodo.closure(F); print(np.isfinite(out).all(), abs(out[:, 0].sum() - F[:, 0].sum()) < 1e-12)")
    assert closure.returncode == 0 and closure.stdout.split() == ["True", "True"], closure.stdout + closure.stderr
    for result in (version, info, reference, closure):
        _no_traceback(result)
    if importlib.util.find_spec("h5py") is not None:
        output = "simulé run.h5"
        simulate = deployment.run("-m", "dodo", "simulate", "--random", "1", "--ncell", "16", "--nphi", "8",
                                  "-o", output)
        _no_traceback(simulate)
        assert simulate.returncode == 0, simulate.stdout + simulate.stderr
        assert (deployment.workdir / output).is_file()
        leftovers = [p.name for p in deployment.workdir.iterdir() if p.name.startswith(".") or "partial" in p.name]
        assert not leftovers  # no lock or partial file left beside the output
    deployment.assert_untouched()


def _as_unprivileged_user(command: list, cwd: Path) -> subprocess.CompletedProcess:
    """`command` run as uid/gid 65534 when this process is root (root reads every file), else as
    this user; skipped where no such child can start or import this installation."""
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")  # util-linux; Python's user= could not exec the interpreter here
        if not setpriv:
            pytest.skip("running as root without setpriv to drop to uid 65534")
        prefix = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    try:
        result = subprocess.run(prefix + command, cwd=cwd, capture_output=True, text=True, timeout=HANG_GUARD_S)
    except PermissionError:
        pytest.skip("cannot start a child as uid 65534 here")
    if prefix and ("No module named" in result.stderr or "Permission denied" in result.stderr and not result.stdout):
        pytest.skip("uid 65534 cannot run this installation: " + (result.stderr.strip().splitlines() or [""])[-1])
    return result


def test_a_model_the_user_may_not_read_raises_permission_error():
    """A model file of mode 000 (another user's, or a permission slip): the runtime's open fails with
    EACCES, and dodo.Closure raised FileNotFoundError("... Permission denied"), which a user's
    `except PermissionError` misses and whose name says the file is not there (deployment probe,
    C round 31). Now PermissionError with errno 13, for a UTF-8 name (the runtime's open) and a
    Latin-1 one (read in Python). In a directory of its own that uid 65534 may enter (pytest's
    tmp_path is 0700)."""
    from dodo.models import default_model_path

    workdir = Path(tempfile.mkdtemp(prefix="dodo-permission-"))
    try:
        workdir.chmod(0o777)
        names = [b"unreadable.onnx", b"unreadable-\xe9.onnx"]
        for name in names:
            target = os.path.join(bytes(workdir), name)
            shutil.copyfile(default_model_path(), target)
            os.chmod(target, 0)
        script = ("import os, sys, dodo\n"
                  "for name in (b'unreadable.onnx', b'unreadable-\\xe9.onnx'):\n"
                  "    try:\n"
                  "        dodo.Closure(os.fsdecode(name))\n"
                  "    except PermissionError as error:\n"
                  "        print(type(error).__name__, error.errno, 'DODO_ERROR_FILE' in str(error))\n"
                  "    except Exception as error:\n"
                  "        print('other', type(error).__name__, error)\n")
        result = _as_unprivileged_user([sys.executable, "-c", script], workdir)
        _no_traceback(result)
        assert result.stdout.split("\n")[:2] == ["PermissionError 13 True"] * 2, result.stdout + result.stderr
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_version_strings_agree(deployment):
    """The package, its metadata, dodo.pc, DodoConfigVersion.cmake, libdodo and CMakeLists.txt."""
    import ctypes
    from importlib import metadata

    version = dodo.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert metadata.version("dodo") == version
    lib = deployment.package / "lib"
    assert f"\nVersion: {version}\n" in (lib / "pkgconfig" / "dodo.pc").read_text()
    assert f'set(PACKAGE_VERSION "{version}")' in (lib / "cmake" / "Dodo" / "DodoConfigVersion.cmake").read_text()
    libdodo = ctypes.CDLL(str(lib / "libdodo.so"))
    libdodo.dodo_version.restype = ctypes.c_char_p
    assert libdodo.dodo_version().decode() == version
    if (ROOT / "CMakeLists.txt").is_file():
        assert re.search(rf"project\(Dodo VERSION {re.escape(version)}\b", (ROOT / "CMakeLists.txt").read_text())


HOST_C = r"""
#include <stdio.h>
#include <dodo/dodo.h>
int main(void) {
  const char* model = dodo_default_model_path();
  dodo_closure* closure = NULL;
  char error[1024] = "";
  dodo_status status = dodo_closure_create(model, NULL, &closure, error, sizeof error);
  double F[24] = {1, 0, 0, .3, .8, 0, 0, -.4, .3, 0, 0, 0, .3, 0, 0, 0, .3, 0, 0, 0, .3, 0, 0, 0}, out[24];
  if (status == DODO_OK) status = dodo_apply(closure, 1, F, NULL, NULL, NULL, out, NULL, NULL);
  printf("version %s\nmodel %s\nstatus %s %s\n", dodo_version(), model ? model : "(null)", dodo_status_name(status), error);
  dodo_closure_destroy(closure);
  return status != DODO_OK;
}
"""


def _check_host(deployment, program: Path) -> None:
    # the copy has no onnxruntime wheel beside it (an installed dodo has, in site-packages)
    ort = _closure.onnxruntime_library_path() or os.environ.get("DODO_ONNXRUNTIME_LIBRARY")
    if not ort:
        pytest.skip("no onnxruntime library to give the C host")
    result = deployment.run(program=str(program), env={"LD_LIBRARY_PATH": "", "DODO_ONNXRUNTIME_LIBRARY": ort})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"version {dodo.__version__}\n" in result.stdout
    assert f"model {deployment.package / 'models' / 'qke_default.onnx'}\n" in result.stdout
    assert "status DODO_OK" in result.stdout


@pytest.mark.skipif(not all(shutil.which(tool) for tool in ("cc", "make", "pkg-config")),
                    reason="needs cc, make and pkg-config")
def test_a_c_host_builds_with_pkg_config_from_an_install_path_with_spaces(deployment):
    """dodo.pc's paths (relative to the .pc file, so holding the copy's spaces and non-ASCII letters)
    through a Makefile, as a host's build uses them; the host runs without LD_LIBRARY_PATH (rpath)."""
    build = deployment.workdir / "pc build é"
    build.mkdir()
    (build / "host.c").write_text(HOST_C)
    pkgconfig = deployment.package / "lib" / "pkgconfig"
    (build / "Makefile").write_text(
        f'host: host.c\n\t$(CC) host.c -o host $(shell PKG_CONFIG_PATH="{pkgconfig}" pkg-config --cflags --libs dodo)\n',
        encoding="utf-8")
    build.chmod(0o777)
    result = deployment.run("-C", str(build), "host", program=shutil.which("make"))
    assert result.returncode == 0, result.stdout + result.stderr
    _check_host(deployment, build / "host")
    deployment.assert_untouched()


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("cc")), reason="needs cmake and cc")
def test_a_c_host_built_with_cmake_from_an_install_path_with_spaces_runs_after_install(deployment):
    """find_package(Dodo) from the copy's lib/cmake/Dodo (spaces, non-ASCII letters), built, installed
    with cmake --install into a prefix with spaces, run from there without LD_LIBRARY_PATH."""
    project = deployment.workdir / "cmake host ü"
    project.mkdir()
    (project / "host.c").write_text(HOST_C)
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(host C)\nfind_package(Dodo CONFIG REQUIRED)\n"
        "add_executable(host host.c)\ntarget_link_libraries(host PRIVATE Dodo::dodo)\ninstall(TARGETS host)\n",
        encoding="utf-8")
    project.chmod(0o777)
    cmake = shutil.which("cmake")
    build, prefix = project / "build dir é", project / "inst ü"
    steps = [["-S", str(project), "-B", str(build), f"-DDodo_DIR={deployment.package / 'lib' / 'cmake' / 'Dodo'}",
              f"-DCMAKE_INSTALL_PREFIX={prefix}"],
             ["--build", str(build)],
             ["--install", str(build)]]
    for step in steps:
        result = deployment.run(*step, program=cmake)
        assert result.returncode == 0, result.stdout + result.stderr
    _check_host(deployment, prefix / "bin" / "host")
    deployment.assert_untouched()


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("cc")), reason="needs cmake and cc")
def test_a_cmake_package_reached_through_a_symlink_uses_the_real_install(deployment, tmp_path):
    """An administrator links the installed package's lib/cmake/Dodo into a shared prefix (`ln -s
    $(dodo info --cmake-dir) /opt/shared/lib/cmake/Dodo`) and users find it by CMAKE_PREFIX_PATH.
    Before: DodoConfig.cmake took its paths relative to the link, so configuring stopped with 'The
    imported target "Dodo::dodo" references the file /opt/shared/dodo/lib/libdodo.so.0.1.0 but this
    file does not exist' (or used another Dodo's files lying there). Now the real file is read: the
    host builds and runs with the install's own library and model. Both a linked directory and linked
    files (DodoConfig.cmake and DodoConfigVersion.cmake alone) are tried. A link to the whole prefix
    (`/opt/apps/dodo/current -> 0.1.0`, which keeps the layout) is kept as given: the library
    directory, and so the rpath, still goes through the link (a later upgrade behind it is followed)."""
    config_dir = deployment.package / "lib" / "cmake" / "Dodo"
    shared_dir, shared_files = tmp_path / "shared dir", tmp_path / "shared files"
    (shared_dir / "lib" / "cmake").mkdir(parents=True)
    (shared_dir / "lib" / "cmake" / "Dodo").symlink_to(config_dir, target_is_directory=True)
    (shared_files / "lib" / "cmake" / "Dodo").mkdir(parents=True)
    for name in ("DodoConfig.cmake", "DodoConfigVersion.cmake"):
        (shared_files / "lib" / "cmake" / "Dodo" / name).symlink_to(config_dir / name)
    project = tmp_path / "host"
    project.mkdir()
    (project / "host.c").write_text(HOST_C)
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(host C)\nfind_package(Dodo CONFIG REQUIRED)\n"
        "add_executable(host host.c)\ntarget_link_libraries(host PRIVATE Dodo::dodo)\n"
        'file(WRITE "${CMAKE_BINARY_DIR}/library_dir.txt" "${Dodo_LIBRARY_DIR}")\n')
    tmp_path.chmod(0o755)
    for path in [project, shared_dir, shared_files]:
        path.chmod(0o777)
    current = tmp_path / "current"
    current.symlink_to(deployment.prefix, target_is_directory=True)
    cmake = shutil.which("cmake")
    cases = [(f"-DCMAKE_PREFIX_PATH={shared_dir}", deployment.package / "lib"),
             (f"-DCMAKE_PREFIX_PATH={shared_files}", deployment.package / "lib"),
             (f"-DDodo_DIR={current / 'dodo' / 'lib' / 'cmake' / 'Dodo'}", current / "dodo" / "lib")]
    for index, (where, library_dir) in enumerate(cases):
        build = project / f"build {index}"
        configure = deployment.run("-S", str(project), "-B", str(build), where, program=cmake)
        assert configure.returncode == 0, configure.stdout + configure.stderr
        found = os.path.normpath((build / "library_dir.txt").read_text())
        if index < 2:  # the install's own directory, however the path to it is spelt
            assert Path(found).resolve() == library_dir.resolve()
        else:  # through the link, as given
            assert found == str(library_dir)
        compiled = deployment.run("--build", str(build), program=cmake)
        assert compiled.returncode == 0, compiled.stdout + compiled.stderr
        _check_host(deployment, build / "host")
    deployment.assert_untouched()


def test_a_libdodo_copied_out_of_a_wheel_names_no_model_of_the_build_machine(tmp_path):
    """dodo_default_model_path() of a libdodo copied out of an installed wheel (a transport code's
    admin copies the library into the code's own lib/) returned the build machine's checkout
    (`/work/main/python/dodo/models/qke_default.onnx`), a path that means nothing where the wheel
    is used, or another model where it exists. A wheel's library looks only beside itself now; an
    editable install (the source tree's python/dodo) keeps the source tree as its last place."""
    import ctypes
    import glob

    import dodo
    from dodo._closure import runtime_available, runtime_paths

    if not runtime_available():
        pytest.skip("dodo built without the closure runtime")
    found = sorted(glob.glob(os.path.join(runtime_paths()["lib_dir"], "libdodo.so.*.*.*")))
    if not found:
        pytest.skip("libdodo not installed beside the package")
    copy = tmp_path / "elsewhere" / "lib" / os.path.basename(found[0])
    copy.parent.mkdir(parents=True)
    shutil.copyfile(found[0], copy)
    library = ctypes.CDLL(str(copy))
    library.dodo_default_model_path.restype = ctypes.c_char_p
    named = library.dodo_default_model_path()
    source_tree = Path(dodo.__file__).resolve().parents[2]
    editable = (source_tree / "cpp" / "src" / "capi.cpp").is_file()
    if editable:
        assert named is None or Path(os.fsdecode(named)).is_relative_to(source_tree / "python" / "dodo" / "models")
    else:
        assert named is None, named


def test_an_output_in_a_directory_the_user_cannot_write_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """`dodo score default F --json DIR/r.json` with DIR not writable by the user computed and printed
    the whole table, then failed at the write. The output's directory is checked up front now (the
    permission as os.access sees it: a non-root user's, or a read-only file system's; root here, so
    os.access is made to say no for DIR)."""
    from dodo._atomic import OutputPathError, check_output_target
    from dodo.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked
                        else real_access(path, mode, **kw))
    with pytest.raises(OutputPathError, match=r"no permission to create files in .*locked"):
        check_output_target(locked / "r.json")
    with pytest.raises(OutputPathError, match=r"no permission to create files in .*locked"):
        check_output_target(locked / "new" / "r.json")  # a directory the write would make under it
    data = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
    assert main(["score", "box3d", str(data), "--json", str(locked / "r.json")]) == 2
    captured = capsys.readouterr()
    assert "bootstrap" not in captured.out and "no permission to create files in" in captured.err
