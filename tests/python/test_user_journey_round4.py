"""A new user's journey from a fresh clone, round four (outside probe): Dodo installed the ways users install
packages, not through the repository's scripts: `pip wheel .` and the wheel installed into a fresh venv
elsewhere, `pip install /path/to/clone` (non-editable), `pip install git+file://...`, then `pip uninstall`.

- A missing optional part's hint (`dodo simulate` without h5py, `dodo train` without the training extras) said
  "pip install '.[train]' in Dodo's repository" to every install but an editable one: a wheel or a git-URL install
  has no repository beside it, so the user had to find one and rebuild Dodo for a few pure-Python packages.
  The hint now lists the extra's packages as the installed distribution's metadata declares them.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _shown_outside_a_checkout(tmp_path):
    """dodo._shown as a wheel installs it: the same file in site-packages/dodo/, with no repository two levels up."""
    package = tmp_path / "lib" / "site-packages" / "dodo"
    package.mkdir(parents=True)
    import dodo._shown

    shutil.copy(dodo._shown.__file__, package / "_shown.py")
    spec = importlib.util.spec_from_file_location("dodo_shown_as_installed", package / "_shown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _declared(extra):
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]


@pytest.mark.parametrize("extra", ["train", "qke", "mpi"])
def test_an_install_without_a_repository_is_told_the_extras_packages(tmp_path, extra):
    """A wheel, `pip install /path/to/dodo` or `pip install git+URL`: the hint names the packages, which pip
    installs without Dodo's repository or a rebuild (before: "pip install '.[train]' in Dodo's repository")."""
    shown = _shown_outside_a_checkout(tmp_path)
    hint = shown.extra_install(extra)
    assert hint.startswith("pip install "), hint
    for requirement in _declared(extra):
        assert f"'{requirement}'" in hint, (requirement, hint)
    assert "Dodo's repository" not in hint and "dodo[" not in hint, hint


def test_an_install_without_metadata_falls_back_to_the_repository_in_words(tmp_path, monkeypatch):
    from importlib import metadata

    shown = _shown_outside_a_checkout(tmp_path)

    def no_distribution(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "requires", no_distribution)
    assert shown.extra_install("train") == "pip install '.[train]' in Dodo's repository (Dodo is not on a package index)"


def _info(flag):
    """`python -m dodo info FLAG` (the documented way to the installation's paths): a Path, None where it fails
    (a Box3D-only build has no C API)."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "dodo", "info", flag], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def _readme_wheel_paragraph():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.find("**On machines without a compiler**")
    assert start >= 0, "README.md, 'Install to use': no word on installing from a wheel"
    return " ".join(text[start:text.find("\n\n", start)].split())


def test_readme_tells_how_to_install_on_machines_without_a_compiler():
    """Nothing in the docs said how to take Dodo to machines that cannot build it (a cluster's nodes): a wheel
    built once (`pip wheel`), installed into a fresh venv elsewhere, ran `python -m dodo.test`, `dodo simulate`
    and the C, C++ and Fortran routes (new user's journey, round four). The paragraph's list of what the wheel
    holds is what an installation holds."""
    import dodo

    paragraph = _readme_wheel_paragraph()
    assert "`pip wheel --no-deps . -w dist`" in paragraph and "pip install dist/dodo-0.1.0-*.whl" in paragraph
    assert f"dist/dodo-{dodo.__version__}-" in paragraph
    assert f"cp{sys.version_info[0]}{sys.version_info[1]}" in paragraph or sys.version_info[:2] != (3, 11)
    assert "pip uninstall dodo" in paragraph and "git+file://" in paragraph
    cmake = _info("--cmake-dir")
    if cmake is None:
        pytest.skip("a Box3D-only build: no C API installed")
    include, lib = _info("--include-dir"), _info("--lib-dir")
    for path in [include / "dodo" / "dodo.h", include / "dodo" / "dodo.hpp", include / "dodo" / "dodo.f90",
                 lib / "libdodo.so", cmake / "DodoConfig.cmake", _info("--pkgconfig-dir") / "dodo.pc",
                 _info("--default-model")]:
        assert path.is_file(), path


def test_readme_names_the_c_libraries_the_built_libdodo_needs():
    """The wheel is tied to the build machine's glibc and libstdc++ (a linux_x86_64 wheel, not manylinux): the
    paragraph names the newest symbol versions libdodo needs. Checked where the build is the project's (Debian 12,
    GCC 12); another toolchain's build needs other versions, which the paragraph does not claim."""
    import re
    import subprocess

    paragraph = _readme_wheel_paragraph()
    objdump = shutil.which("objdump")
    lib = _info("--lib-dir")
    if objdump is None or lib is None:
        pytest.skip("needs objdump and a libdodo")
    symbols = subprocess.run([objdump, "-T", str(lib / "libdodo.so")], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    def newest(prefix):
        versions = {tuple(int(part) for part in found.split(".")) for found in re.findall(rf"\b{prefix}_([0-9.]+)\b", symbols)}
        return ".".join(map(str, max(versions)))

    glibc, glibcxx = newest("GLIBC"), newest("GLIBCXX")
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").is_file() else ""
    if 'VERSION_ID="12"' not in os_release or "ID=debian" not in os_release:
        pytest.skip(f"built elsewhere than Debian 12 (needs glibc {glibc}, GLIBCXX_{glibcxx})")
    assert f"glibc {glibc}" in paragraph and f"GLIBCXX_{glibcxx}" in paragraph, (glibc, glibcxx, paragraph)


C_HOST = r"""
#include <stdio.h>
#include <dodo/dodo.h>
int main(int argc, char** argv) {
  double F[6][4] = {{1e33, 0, 0, 0.5e33}, {0}, {0}, {1e33, 0, 0, -0.5e33}, {0}, {0}}, F_pred[6][4];
  dodo_options options;  dodo_options_init(&options);  options.threads = 1;
  dodo_closure* closure = NULL;  char message[4096];
  if (argc < 2 || dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) {
    fprintf(stderr, "%s\n", argc < 2 ? "usage" : message);  return 1;
  }
  int ok = dodo_apply(closure, 1, &F[0][0], NULL, NULL, NULL, &F_pred[0][0], NULL, NULL) == DODO_OK;
  dodo_closure_destroy(closure);
  printf("%g\n", F_pred[0][0]);
  return ok ? 0 : 1;
}
"""


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler (cc)")
def test_a_c_host_whose_onnxruntime_is_in_another_site_packages_follows_runtime_md(tmp_path):
    """onnxruntime in another site-packages than dodo (PYTHONPATH, `--user`, `--system-site-packages`): Python's
    closure finds it, a C host's libdodo (which looks beside itself) refused every model, "cannot load the ONNX
    Runtime library (pip install onnxruntime, ...)", with onnxruntime installed. docs/runtime.md now says so and what
    to set; the advice is checked on a copy of this installation's libdodo with no onnxruntime beside it."""
    import subprocess

    text = " ".join((ROOT / "docs" / "runtime.md").read_text(encoding="utf-8").split())
    assert "where the two sit in different ones" in text and "`onnxruntime_library:` line of `python -m dodo info`" in text
    lib, include, model = _info("--lib-dir"), _info("--include-dir"), _info("--default-model")
    if lib is None or not (lib / "libdodo.so").is_file():
        pytest.skip("a Box3D-only build: no C API installed")
    info = subprocess.run([sys.executable, "-m", "dodo", "info"], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=True).stdout
    (library,) = [line.split(": ", 1)[1].split(" (")[0] for line in info.splitlines()
                  if line.startswith("onnxruntime_library: ")]
    if not Path(library).is_file():
        pytest.skip(f"no onnxruntime library in this Python ({library})")
    copy = tmp_path / "site-packages" / "dodo" / "lib"  # a wheel's layout, without onnxruntime beside it
    copy.mkdir(parents=True)
    for name in ("libdodo.so", "libdodo.so.0"):
        shutil.copy(lib / name, copy / name)
    (tmp_path / "host.c").write_text(C_HOST)
    subprocess.run(["cc", "-std=c99", str(tmp_path / "host.c"), f"-I{include}", f"-L{copy}", f"-Wl,-rpath,{copy}",
                    "-ldodo", "-o", str(tmp_path / "host")], check=True, timeout=300)
    environment = {key: value for key, value in os.environ.items() if key != "DODO_ONNXRUNTIME_LIBRARY"}
    environment["DODO_ONNXRUNTIME_LIBRARY"] = library  # the docs' advice
    result = subprocess.run([str(tmp_path / "host"), str(model)], capture_output=True, text=True, timeout=120,
                            env=environment)
    assert result.returncode == 0 and float(result.stdout) > 0, (result.returncode, result.stdout, result.stderr)
