"""Outside probe of the C, C++ and Fortran interfaces, round fourteen (docs/reliability_cpp.md,
"Round fourteen"). Each test failed on the code as it was before its fix."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from capi_host import default_model

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "probe_round14"


def _run(program: Path, *arguments: str, timeout: float = 120, env: dict | None = None):
    try:
        return subprocess.run([str(program), *arguments], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"{program.name} {' '.join(arguments)} did not finish within {timeout} s (hang)")


# --- QKE step: its starting moments and the step under one hold of the kernel's lock -------------

def test_qke_step_returns_the_moments_of_the_state_it_stepped_from(tmp_path):
    """A set_state from another caller that lands between step's reading of the starting moments and
    its stepping (pthread_mutex_unlock interposed: the other caller runs at the first release of the
    lock inside step, no timing involved). Before: two holds, so step returned X's moments and
    stepped Y. Now one hold: the moments are X's and the step is X's; Y lands after."""
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    program = tmp_path / "qke_step_one_hold"
    subprocess.run(["g++", "-std=c++17", "-O1", f"-I{ROOT / 'cpp/src'}", str(HERE / "qke_step_one_hold.cpp"),
                    str(ROOT / "cpp/src/qke/flavour_box.cpp"), str(ROOT / "cpp/src/qke/row_fft.cpp"),
                    "-o", str(program), "-pthread", "-ldl"], check=True)
    result = _run(program)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert result.stdout.strip() == "moments of X; state Y (set after the step)"


# --- ORT_DISABLE_TELEMETRY: set when libdodo is loaded, not while the host's threads run ----------

def _libdodo_flags() -> list[str]:
    from test_native_programs import pkg_config

    return [f"-I{ROOT / 'cpp/include'}", *pkg_config("--cflags", "--libs")]


def test_libdodo_sets_no_environment_variable_while_the_host_has_threads(tmp_path):
    """libdodo set ORT_DISABLE_TELEMETRY=1 at the first closure with a model, with setenv: by then a
    host has its threads, and glibc's setenv may move the environment array from under one inside
    getenv (setenv is MT-Unsafe). setenv interposed in a host that starts a thread before its first
    closure: before, one call with two threads alive; now the variable is set when libdodo is loaded
    (before main), and the host's own value (0) is still kept."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    model = default_model()
    program = tmp_path / "setenv_threads"
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", str(HERE / "setenv_threads.c"),
                    *_libdodo_flags(), "-pthread", "-ldl", "-o", str(program)], check=True)
    env = {key: value for key, value in os.environ.items() if key != "ORT_DISABLE_TELEMETRY"}
    result = subprocess.run([str(program), model], capture_output=True, text=True, timeout=120, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    assert result.stdout.strip() == "create 0; at main 1; after 1; setenv alone 1, with threads 0", result.stdout
    result = subprocess.run([str(program), model], capture_output=True, text=True, timeout=120,
                            env=dict(env, ORT_DISABLE_TELEMETRY="0"), stdin=subprocess.DEVNULL)
    assert result.stdout.strip() == "create 0; at main 0; after 0; setenv alone 0, with threads 0", result.stdout


# --- QKE kernel sizes whose storage wraps past 2^64 ------------------------------------------------

def test_qke_kernel_storage_beyond_the_address_space_is_refused_not_wrapped(tmp_path):
    """The kernel's storage, ncell x (76 directions + 192) doubles per simulation, was multiplied
    unchecked. ncell 65536, 2,732,696 directions, 1,355,297 simulations wrapped past 2^64 to 251 MB:
    accepted, and the first step wrote beyond it (SIGSEGV; 760 MB peak before the fix, 145 MB now).
    262144 of each did not wrap but was refused with libstdc++'s "cannot create std::vector larger
    than max_size()". Both are now std::invalid_argument (ValueError in Python) naming the sizes."""
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    program = tmp_path / "qke_kernel_sizes"
    subprocess.run(["g++", "-std=c++17", "-O1", f"-I{ROOT / 'cpp/src'}", str(HERE / "qke_kernel_sizes.cpp"),
                    str(ROOT / "cpp/src/qke/flavour_box.cpp"), str(ROOT / "cpp/src/qke/row_fft.cpp"),
                    "-o", str(program), "-pthread"], check=True)
    for ncell, ndir, nsim in ((65536, 2732696, 1355297), (262144, 262144, 262144)):
        result = _run(program, str(ncell), str(ndir), str(nsim))
        assert result.returncode == 0, (ncell, ndir, nsim, result.returncode, result.stdout, result.stderr[-2000:])
        assert result.stdout.strip() == (
            f"refused: the compiled QKE kernel cannot hold {nsim} simulation(s) of {ncell} cells x {ndir} directions: "
            "its storage (about 76 doubles per cell, direction and simulation) would exceed the address space"), \
            result.stdout
    result = _run(program, "64", "48", "4")  # an ordinary size still steps
    assert result.stdout.split() == ["accepted", "stepped"], result.stdout


# --- an option value the library does not know, with a model ---------------------------------------

def test_an_unknown_z_method_or_lebedev_order_is_named_as_such_with_a_model_too(tmp_path):
    """z_method "Exact" (a typo) or lebedev_order 5 (an order the library lacks): Box3D alone said
    'unknown z_method "Exact" (known: ...)' / 'lebedev_order 5 is not available; available orders:
    ...' (DODO_ERROR_INVALID_ARGUMENT); with a model the same typo came back as the package's fault,
    DODO_ERROR_MODEL_METADATA 'model "dodo.box3d" z_method is "exact" but z_method "Exact" was
    requested', as if "Exact" were a value the host could have meant. Now the same refusal both ways."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    model = default_model()
    program = tmp_path / "option_typos"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", str(HERE / "option_typos.c"), *_libdodo_flags(),
                    "-o", str(program)], check=True)
    result = _run(program, model)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    z_method = 'DODO_ERROR_INVALID_ARGUMENT|unknown z_method "Exact" (known: "exact", "jedynak")'
    order = "DODO_ERROR_INVALID_ARGUMENT|Box3D settings: lebedev_order 5 is not available; available orders: 17 41 131"
    assert result.stdout.splitlines() == [z_method, order, z_method, order], result.stdout


# --- Fortran: a dodo_closure that holds no closure --------------------------------------------------

def test_fortran_calls_on_a_closure_never_created_or_destroyed_say_so(tmp_path):
    """dodo_apply, dodo_get_counters, dodo_reset_counters, dodo_self_test on a type(dodo_closure)
    never created, whose dodo_create failed, or after dodo_destroy: stat 1 with C's "closure handle
    is NULL", words for a pointer the Fortran host never saw (it holds a derived type). Now the
    Fortran text says what the variable is and what to do (read on failure only)."""
    from test_native_programs import pkg_config, run

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    program = tmp_path / "no_closure"
    run(["gfortran", "-std=f2018", "-Wall", "-J", str(tmp_path), str(ROOT / "cpp/include/dodo/dodo.f90"),
         str(HERE / "no_closure.f90"), *pkg_config("--libs"), "-o", str(program)])
    result = _run(program)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    text = ("this dodo_closure holds no closure (never created, its dodo_create failed, or dodo_destroy "
            "destroyed it): call dodo_create first")
    assert result.stdout.splitlines() == [f"never apply 1 {text}", f"failed counters 1 {text}",
                                          f"destroyed reset 1 {text}", f"destroyed self_test 1 {text}"], result.stdout


def test_python_qke_kernel_of_impossible_size_is_a_value_error_naming_it():
    """The same through dodo._core.QkeKernel: ValueError naming the sizes (it said "cannot create
    std::vector larger than max_size()")."""
    import numpy as np

    core = pytest.importorskip("dodo._core")
    directions = np.zeros((262144, 3))
    directions[:, 2] = 1.0
    with pytest.raises(ValueError, match=r"cannot hold 262144 simulation\(s\) of 262144 cells x 262144 directions"):
        core.QkeKernel(directions, 262144, np.ones(262144), np.ones(262144), None, 1.0, 1.0)


# --- dodo.hpp under a C++ standard it does not support ---------------------------------------------

def test_dodo_hpp_under_cplusplus_11_says_which_standard_it_needs(tmp_path):
    """A host still on C++11 (-std=c++11) got "'exchange' is not a member of 'std'" from inside
    dodo.hpp, nothing about the standard; now one #error naming what it needs and the C API as the
    way from C++11. C++14, 17 and 20 compile as before."""
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    source = tmp_path / "host.cpp"
    source.write_text("#include <dodo/dodo.hpp>\nint main() { dodo::Closure closure; return closure.has_model(); }\n")
    old = subprocess.run(["g++", "-std=c++11", "-fsyntax-only", f"-I{ROOT / 'cpp/include'}", str(source)],
                         capture_output=True, text=True)
    assert old.returncode != 0
    assert "dodo/dodo.hpp needs C++14 or later" in old.stderr, old.stderr[-2000:]
    assert "exchange" not in old.stderr, old.stderr[-2000:]
    for standard in ("c++14", "c++17", "c++20"):
        done = subprocess.run(["g++", f"-std={standard}", "-fsyntax-only", f"-I{ROOT / 'cpp/include'}", str(source)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (standard, done.stderr[-2000:])


# --- pybind11: an output array of the wrong dtype says which ---------------------------------------

def test_an_output_array_of_the_wrong_dtype_names_both_dtypes():
    """dodo._core's apply_into (Box3D and the closure) said "out.F_box: wrong dtype for an output
    array", neither what it was given nor what it writes; now both."""
    import numpy as np

    core = pytest.importorskip("dodo._core")
    F = np.zeros((3, 6, 4))
    F[:, :, 0] = 1.0
    F[:, :, 3] = 0.2
    good = dict(F_box=np.zeros((3, 6, 4)), growth_over_ntot=np.zeros(3), growth_rate=np.zeros(3),
                status=np.zeros(3, np.uint32))
    for name, bad, text in (("F_box", np.zeros((3, 6, 4), np.float32), "it is float32, this call writes float64"),
                            ("status", np.zeros(3, np.int32), "it is int32, this call writes uint32")):
        arrays = {**good, name: bad}
        with pytest.raises(TypeError, match=f"out.{name}: wrong dtype for an output array: {text}"):
            core.Box3D().apply_into(F, None, arrays["F_box"], arrays["growth_over_ntot"], arrays["growth_rate"],
                                    arrays["status"])
