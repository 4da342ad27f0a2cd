"""Outside probe of the C interface, round eighteen (docs/reliability_cpp.md, "Round eighteen").
Each test failed on the code as it was before its fix, then passed (against a build of the fixed
library: LD_LIBRARY_PATH, until the installed one is rebuilt). The JSON reader's own cases are
ctest `json` (tests/cpp/test_json.cpp)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from capi_host import compile_host, default_model, needs_runtime, run_host
from test_probe_round16_capi import LOAD_PACKAGES


def _resigned(tmp_path, model, key, rewrite, name):
    """The package with metadata entry `key`'s text rewritten by `rewrite` (a function of the
    text), digests recomputed as a deliberate editor would."""
    import onnx

    import dodo

    package = onnx.load(model)
    entry = next(e for e in package.metadata_props if e.key == key)
    entry.value = rewrite(entry.value)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(dodo._core.with_content_digest(package.SerializeToString()))
    return str(path)


def _first_a_second(key_and_value):
    """Puts `"key": value, ` before the object's own keys: the key given twice, the edited value
    first and the package's own last (the one a map that keeps the last value reads)."""
    return lambda text: text.replace("{", "{" + key_and_value + ", ", 1)


@needs_runtime
def test_a_key_given_twice_in_the_models_metadata_json_is_refused(tmp_path):
    model = default_model()
    packages = [
        _resigned(tmp_path, model, "dodo.box3d", lambda text: text, "unedited"),
        _resigned(tmp_path, model, "dodo.box3d", _first_a_second('"max_flux_factor": 0.5'), "box3d"),
        _resigned(tmp_path, model, "dodo.native_network", _first_a_second('"r_scale": 286.8057'), "native"),
        _resigned(tmp_path, model, "dodo.test_vectors", _first_a_second('"atol_over_ntot": 1.0'), "vectors"),
        # non-JSON that std::strtod and std::stoul took: "0x11" for 17, "\u+074" for "t"
        _resigned(tmp_path, model, "dodo.box3d", lambda text: text.replace('"lebedev_order": 17', '"lebedev_order": 0x11'),
                  "hex"),
        _resigned(tmp_path, model, "dodo.box3d", lambda text: text.replace('"exact"', '"exac\\u+074"'), "escape"),
    ]
    program = compile_host(tmp_path, "load_packages", LOAD_PACKAGES)
    lines = run_host(program, *packages, timeout=300)
    assert lines[0] == "0", lines
    # Before: each loaded (status 0), the last value of each key silently winning, "0x11" read
    # as 17 and "\u+074" as "t".
    for line, where, what in zip(lines[1:], ['model metadata "dodo.box3d" is not valid JSON',
                                             'metadata "dodo.native_network" is not valid JSON',
                                             'model metadata "dodo.test_vectors" is not valid JSON',
                                             'model metadata "dodo.box3d" is not valid JSON',
                                             'model metadata "dodo.box3d" is not valid JSON'],
                                 ['key "max_flux_factor" given twice at offset ',
                                  'key "r_scale" given twice at offset ',
                                  'key "atol_over_ntot" given twice at offset ',
                                  "expected ',' or '}' at offset ",
                                  "bad \\u escape at offset "], strict=True):
        assert line.startswith("4 model file "), line  # DODO_ERROR_MODEL_METADATA
        assert where in line and what in line, line


@needs_runtime
def test_a_metadata_entry_of_millions_of_values_is_refused_before_it_takes_gigabytes(tmp_path):
    model = default_model()
    # 2,200,000 zeros (4.4 MB) after the test vectors' own keys: well within the 256 MiB file bound.
    padded = _resigned(tmp_path, model, "dodo.test_vectors",
                       lambda text: text[:-1] + ', "pad": [' + ",".join(["0"] * 2_200_000) + "]}", "padded")
    program = compile_host(tmp_path, "load_packages", LOAD_PACKAGES)
    lines = run_host(program, padded, timeout=300)
    # Before: loaded (status 0) after reading each value into some 200 bytes: 40 MB of "0," took
    # 4.2 GB and 19 s, and a package near the file bound more memory than a node has.
    assert lines[0].startswith("4 model file "), lines
    assert 'model metadata "dodo.test_vectors" is not valid JSON: invalid JSON (more than 2097152 values at offset ' \
        in lines[0], lines


@needs_runtime
def test_a_number_matching_only_a_constant_that_no_node_reads_is_refused(tmp_path):
    import json

    import onnx

    from test_probe_cpp_round17_capi import _resigned as resigned_description

    model = default_model()
    description = json.loads(next(e.value for e in onnx.load(model).metadata_props if e.key == "dodo.native_network"))
    halved = float(np.float32(description["sigma_floor"]) * np.float32(0.5))

    def halve(d):
        d["sigma_floor"] = halved

    packages = [resigned_description(tmp_path, model, lambda d: None, "decoy_alone", extra_scalar=("decoy", halved)),
                resigned_description(tmp_path, model, halve, "decoy_halved", extra_scalar=("decoy", halved))]
    program = compile_host(tmp_path, "load_packages", LOAD_PACKAGES)
    lines = run_host(program, *packages, timeout=300)
    assert lines[0] == "0", lines  # an unused initializer alone changes nothing
    # Before: status 0, sigma_floor x 0.5 in use (round seventeen's open item): the number equals
    # the unused initializer "decoy", which passed the membership test.
    assert lines[1].startswith("4 model file "), lines
    assert 'metadata "dodo.native_network" gives sigma_floor ' in lines[1], lines
    assert "which is not a constant of the graph (edited after export?)" in lines[1], lines


MESSAGE_LENGTHS = r"""
#include <dodo/dodo.h>
#include <stdio.h>

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    dodo_closure* closure = NULL;
    static char message[4096];
    int status = dodo_closure_create(argv[i], NULL, &closure, message, sizeof message);
    printf("%d %zu %s\n", status, dodo_last_error(NULL, NULL, 0), message);
    dodo_closure_destroy(closure);
  }
  return 0;
}
"""


@needs_runtime
def test_a_megabyte_metadata_value_is_quoted_in_a_message_by_its_first_bytes_and_length(tmp_path):
    model = default_model()
    packages = [
        _resigned(tmp_path, model, "dodo.format_version", lambda text: text + "x" * 2_000_000, "format_version"),
        _resigned(tmp_path, model, "dodo.features", lambda text: text + "y" * 2_000_000, "features"),
        _resigned(tmp_path, model, "dodo.outputs", lambda text: text + " " + "q" * 2_000_000, "outputs"),
        _resigned(tmp_path, model, "dodo.box3d", lambda text: text.replace('"exact"', '"' + "w" * 2_000_000 + '"'), "z_method"),
    ]
    program = compile_host(tmp_path, "message_lengths", MESSAGE_LENGTHS)
    lines = run_host(program, *packages, timeout=300)
    # Before: each message quoted the whole value: 2,000,000 bytes and more (dodo_last_error's
    # length; Python's exception text, a log line), for a value the host never gave.
    for line, quoted in zip(lines, ['"dodo.format_version" is "1xxxxx', '"dodo.features" is "invariants',
                                    'got ["head_output"', 'z_method "wwwww'], strict=True):
        status, length, message = line.split(" ", 2)
        assert status == "4", line
        assert int(length) < 1000 and len(message) == int(length), line
        assert quoted in message, line
        assert " bytes)" in message, line


def _comma_locale(tmp_path) -> dict:
    """The environment of a host that can set "de_DE.UTF-8", a locale whose decimal separator is
    a comma: made with localedef into tmp_path (LOCPATH); skipped where localedef or its sources
    are missing."""
    if not shutil.which("localedef") or not Path("/usr/share/i18n/locales/de_DE").is_file():
        pytest.skip("localedef or the de_DE locale source is not installed")
    directory = tmp_path / "locales"
    directory.mkdir()
    made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(directory / "de_DE.UTF-8")],
                          capture_output=True, text=True)
    if not (directory / "de_DE.UTF-8").exists():
        pytest.skip(f"localedef could not make de_DE.UTF-8: {made.stderr[-500:]}")
    return {"LOCPATH": str(directory)}


LOAD_UNDER_LOCALE = r"""
#include <dodo/dodo.h>
#include <locale.h>
#include <stdio.h>
#include <string.h>

static void load(const char* path, double max_flux_factor, int run_self_test) {
  dodo_options options;
  dodo_options_init(&options);
  options.max_flux_factor = max_flux_factor;
  options.run_self_test = run_self_test;
  dodo_closure* closure = NULL;
  char message[1024] = "";
  int status = dodo_closure_create(path, &options, &closure, message, sizeof message);
  printf("%d %s\n", status, message);
  dodo_closure_destroy(closure);
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  /* A host that follows its user's locale, as programs with a user interface do. */
  if (!setlocale(LC_ALL, "de_DE.UTF-8") || strcmp(localeconv()->decimal_point, ",") != 0) return 2;
  load(argv[1], 0, 1);
  load(argv[1], 1.5, 1);
  load(argv[2], 0, 1);
  printf("%s\n", localeconv()->decimal_point);  /* the host's locale is left as it was */
  return 0;
}
"""


@needs_runtime
def test_a_host_under_a_comma_decimal_locale_loads_the_model_and_reads_numbers_with_a_point(tmp_path):
    env = _comma_locale(tmp_path)
    model = default_model()
    # a package whose self-test fails (its first expected value moved), for a message with numbers
    def moved(text):
        import json

        vectors = json.loads(text)
        vectors["F_pred"][0][0][0] += 0.25 * abs(vectors["F_pred"][0][0][0]) + 0.25
        return json.dumps(vectors)

    failing = _resigned(tmp_path, model, "dodo.test_vectors", moved, "self_test")
    program = compile_host(tmp_path, "load_under_locale", LOAD_UNDER_LOCALE)
    lines = run_host(program, model, failing, timeout=300, env=env)
    # Before: std::strtod read "0.98" as 0 under the host's LC_NUMERIC, and no model loaded:
    # '4 model file ...: metadata "dodo.native_network" is not a JSON object (invalid JSON
    # (expected ',' or '}' at offset 437))'; messages wrote numbers with a comma ("got 1,5").
    assert lines[0] == "0", lines
    assert lines[1] == "1 max_flux_factor must lie in (0, 1), or 0 for the model's; got 1.5", lines
    assert lines[2].startswith("7 "), lines  # DODO_ERROR_SELF_TEST
    assert "self-test failed: test vector 0 differs by 0." in lines[2] and "(tolerance " in lines[2], lines
    assert "," not in lines[2].split("differs by", 1)[1], lines
    assert lines[3] == ",", lines


@needs_runtime
def test_python_under_a_comma_decimal_locale_loads_the_default_model(tmp_path):
    env = _comma_locale(tmp_path)
    default_model()
    script = ("import locale; locale.setlocale(locale.LC_ALL, 'de_DE.UTF-8')\n"
              "assert locale.localeconv()['decimal_point'] == ','\n"
              "import dodo; closure = dodo.Closure(); print(closure.self_test() >= 0)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    # Before: dodo.ModelMetadataError 'metadata "dodo.native_network" is not a JSON object ...'
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True", result.stdout


# --- an install whose directories are not lib/ and include/ under the prefix ------------------

def _configure(tmp_path, *definitions):
    """Configures (never builds) the source tree with `definitions`; the build directory."""
    from test_install import ROOT as SOURCE, cmake_tool, configure

    if not (SOURCE / "CMakeLists.txt").is_file() or not cmake_tool("cmake"):
        pytest.skip("needs the source tree and cmake")
    build = tmp_path / "build"
    result = configure(build, f"-DPython3_EXECUTABLE={sys.executable}", f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'prefix'}",
                       *definitions)
    if result.returncode != 0 and "onnxruntime" in (result.stdout + result.stderr).lower():
        pytest.skip("no ONNX Runtime for the runtime's build")
    assert result.returncode == 0, result.stderr[-2000:]
    return build


def test_an_absolute_include_directory_is_the_pkg_config_files_include_directory(tmp_path):
    include = tmp_path / "elsewhere" / "include"
    build = _configure(tmp_path, f"-DCMAKE_INSTALL_INCLUDEDIR={include}")
    lines = (build / "cpp/src/runtime/dodo.pc").read_text().splitlines()
    # Before: "includedir=${prefix}/" + the absolute path, a directory under the prefix:
    # "${pcfiledir}/../..//tmp/.../elsewhere/include", where no dodo.h lies.
    assert f"includedir={include}" in lines, lines
    assert "libdir=${prefix}/lib" in lines, lines


def test_a_multiarch_library_directory_still_finds_the_installed_default_model(tmp_path):
    build = _configure(tmp_path, "-DCMAKE_INSTALL_LIBDIR=lib/x86_64-linux-gnu")
    # dodo_default_model_path() looks beside the library for what `cmake --install` of this build
    # put there. Before: only "../share/dodo/models", which from lib/x86_64-linux-gnu (Debian's
    # GNUInstallDirs default for the prefix /usr) is lib/share/...: an installed libdodo returned
    # the source tree's model, or NULL without the source tree.
    flags = "".join(path.read_text() for pattern in ("build.ninja", "flags.make") for path in build.rglob(pattern))
    assert 'DODO_INSTALLED_MODELS_DIR=\\"../../share/dodo/models\\"' in flags, "the installed model's place is not compiled in"
    lines = (build / "cpp/src/runtime/dodo.pc").read_text().splitlines()
    assert "prefix=${pcfiledir}/../../.." in lines, lines
    assert "libdir=${prefix}/lib/x86_64-linux-gnu" in lines, lines
