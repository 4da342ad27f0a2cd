"""Outside probe, Python round fifty (docs/reliability_python.md section 84): the Python API and the
run-time commands as a user calls them from the README. Each test failed on the code before its fix,
except those marked as guards."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest

import dodo
from cli_helpers import emu_file, run
from dodo.conventions import to_emu_layout
from test_runtime_reliability import run_child


def _cells(n: int = 3) -> np.ndarray:
    """``n`` crossing cells at rest (an ELN crossing along z), densities of order 1 (cm^-3)."""
    F = np.zeros((n, 6, 4))
    F[:, :, 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    F[:, 0, 0] += 0.01 * np.arange(n)
    return F


def _needs_runtime():
    if not dodo.runtime_available():
        pytest.skip("no closure runtime in this build")


# --- arrays that carry a unit -------------------------------------------------------------------

class _AstropyLikeQuantity(np.ndarray):
    """An ndarray subclass with a unit, converted by ``to_value`` as astropy's Quantity is (astropy is not
    installed here; the real libraries were checked by hand, section 84)."""

    _FACTORS = {("1 / cm3", "cm**-3"): 1.0, ("1 / m3", "cm**-3"): 1e-6, ("", ""): 1.0, ("%", ""): 0.01}

    def __new__(cls, values, unit):
        quantity = np.array(values, dtype=float).view(cls)
        quantity.unit = unit
        return quantity

    def __array_finalize__(self, obj):
        self.unit = getattr(obj, "unit", None)

    @property
    def value(self):
        return self.view(np.ndarray)

    def to_value(self, target):
        if (self.unit, target) not in self._FACTORS:
            raise ValueError(f"'{self.unit}' and '{target}' are not convertible")  # astropy's UnitConversionError is one
        return self.value * self._FACTORS[(self.unit, target)]


class _PintLikeQuantity:
    """A pint Quantity's interface: magnitude, units, m_as, and an __array__ that drops the unit."""

    _FACTORS = {("1 / centimeter ** 3", "cm**-3"): 1.0, ("1 / meter ** 3", "cm**-3"): 1e-6, ("dimensionless", ""): 1.0}

    def __init__(self, values, units):
        self.magnitude, self.units = np.array(values, dtype=float), units

    def m_as(self, target):
        if (self.units, target) not in self._FACTORS:
            raise ValueError(f"Cannot convert from '{self.units}' to '{target}'")  # pint's DimensionalityError
        return self.magnitude * self._FACTORS[(self.units, target)]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.magnitude, dtype=dtype)


@pytest.mark.parametrize("make, fix", [(lambda F: _AstropyLikeQuantity(F * 1e6, "1 / m3"), 'F_init.to_value("cm**-3")'),
                                       (lambda F: _PintLikeQuantity(F * 1e6, "1 / meter ** 3"), 'F_init.m_as("cm**-3")')],
                         ids=["astropy", "pint"])
def test_f_init_in_another_number_density_unit_is_refused_naming_the_conversion(make, fix):
    """`dodo.closure(F * u.m**-3)`: the unit was dropped and the numbers (1e6 x those in cm^-3) computed
    with, growth_rate 1e6 too large without a word. Now refused in one line that names the factor and the
    conversion, in every call that takes F_init; a quantity in cm^-3 is read as its numbers."""
    _needs_runtime()
    F = _cells()
    quantity = make(F)
    calls = {"dodo.box3d": lambda: dodo.box3d(quantity), "Closure.apply": lambda: dodo.Closure("box3d").apply(quantity),
             "dodo.closure": lambda: dodo.closure(quantity, model="box3d"), "invariants": lambda: dodo.invariants(quantity)}
    for name, call in calls.items():
        with pytest.raises(ValueError) as refusal:
            call()
        text = str(refusal.value)
        assert text.startswith("F_init is a quantity in ") and "assumes number densities in cm^-3" in text, (name, text)
        assert "a rate 1e+06 times the true one" in text and text.endswith(f"give {fix}") and "\n" not in text, text
    in_cm3 = (_AstropyLikeQuantity(F, "1 / cm3") if isinstance(quantity, np.ndarray)
              else _PintLikeQuantity(F, "1 / centimeter ** 3"))
    plain = dodo.box3d(F)
    assert np.array_equal(dodo.box3d(in_cm3).F_box, plain.F_box)
    assert np.array_equal(dodo.box3d(in_cm3).growth_rate, plain.growth_rate)


def test_f_init_that_is_no_number_density_and_a_u_with_a_unit_are_refused():
    """F_init in a unit that is no number density, u in km/s or in percent: computed with before. A
    dimensionless u or F_init is read as its numbers (the result of plain arrays, bit for bit)."""
    F = _cells()
    with pytest.raises(ValueError, match=r"^F_init is a quantity in % .*not a number density in cm\^-3 or plain numbers"):
        dodo.box3d(_AstropyLikeQuantity(F, "%"))
    u = np.array([1.0, 0.0, 0.0, 0.0])
    for quantity in (_AstropyLikeQuantity(u, "km / s"), _AstropyLikeQuantity(u * 100, "%"), _PintLikeQuantity(u, "meter / second")):
        with pytest.raises(ValueError, match=r"^u is a quantity in .*: u is the fluid four-velocity in plain numbers"):
            dodo.box3d(F, quantity)
    moving = np.array([1.25, 0.75, 0.0, 0.0])
    expected = dodo.box3d(F, moving)
    for quantity in (_AstropyLikeQuantity(moving, ""), _PintLikeQuantity(moving, "dimensionless")):
        assert np.array_equal(dodo.box3d(_AstropyLikeQuantity(F, ""), quantity).F_box, expected.F_box)


def test_real_unit_libraries_are_refused_or_read_as_the_fakes_are():
    """The same with astropy and pint themselves, where installed (skipped otherwise)."""
    units = pytest.importorskip("astropy.units")
    F = _cells()
    with pytest.raises(ValueError, match=r'a rate 1e\+06 times the true one; give F_init.to_value\("cm\*\*-3"\)$'):
        dodo.box3d(F * 1e6 * units.m ** -3)
    assert np.array_equal(dodo.box3d(F * units.cm ** -3).F_box, dodo.box3d(F).F_box)
    pint = pytest.importorskip("pint")
    registry = pint.UnitRegistry()
    with pytest.raises(ValueError, match=r'give F_init.m_as\("cm\*\*-3"\)$'):
        dodo.box3d(registry.Quantity(F * 1e6, "1/m**3"))


# --- a FIFO, a device or a socket as the model ------------------------------------------------------

def test_a_fifo_device_or_socket_as_the_model_says_what_it_is(tmp_path, monkeypatch):
    """`dodo.Closure("/dev/null")`, a FIFO (a shell's <(...)), a socket: the binding's FileNotFoundError
    "is not a regular file (a device, FIFO or socket)", not saying which. Now the kind and what to give
    instead; still a FileNotFoundError (round 26 pins the type)."""
    _needs_runtime()
    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe.onnx")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind("sock.onnx")
        cases = {"pipe.onnx": "is a FIFO (named pipe), not a regular file; the package is read whole",
                 os.devnull: 'is a character device, not a regular file; for Box3D without a learned correction give "box3d"',
                 "sock.onnx": "is a socket, not a regular file; give the path of a model package file"}
        for path, words in cases.items():
            for make in (lambda: dodo.Closure(path), lambda: dodo.closure(_cells(), model=path)):
                with pytest.raises(FileNotFoundError) as refusal:
                    make()
                assert type(refusal.value).__name__ == "ModelPathNotARegularFileError"
                assert str(refusal.value).startswith("DODO_ERROR_FILE: model path ") and words in str(refusal.value)
    finally:
        server.close()


def test_dodo_score_with_a_fifo_as_the_model_says_it_is_a_fifo(tmp_path, monkeypatch, capsys):
    _needs_runtime()
    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe.onnx")
    emu_file("cells.h5", to_emu_layout(_cells()))
    code, _, err = run(capsys, ["score", "pipe.onnx", "cells.h5"])
    assert code == 2 and err.startswith('dodo score: error: DODO_ERROR_FILE: model path "pipe.onnx" is a FIFO'), err


# --- a signal handler that raises inside dodo's at-fork handlers -------------------------------------

FORK_HANDLERS_INTERRUPTED = """
    import os, sys, threading
    import dodo
    from dodo import _box3d, _closure

    parent = os.getpid()
    files = (_box3d.__file__, _closure.__file__)
    state = {"k": 0, "seen": 0, "raised": False}

    def local(frame, event, arg):
        # A signal handler that raises (a SIGALRM timeout, a SIGTERM handler) runs between two lines:
        # the k-th line that dodo's at-fork handlers run raises here.
        if event == "line" and os.getpid() == parent and not state["raised"]:
            state["seen"] += 1
            if state["seen"] == state["k"]:
                state["raised"] = True
                raise KeyboardInterrupt
        return local

    def fork(traced):
        if traced:
            sys.settrace(lambda frame, event, arg: local if frame.f_code.co_filename in files else None)
        try:
            pid = os.fork()
        finally:
            sys.settrace(None)
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    def free_for_another_thread(lock):
        taken = []
        def take():
            if lock.acquire(timeout=20):
                taken.append(True)
                lock.release()
        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
        return bool(taken)

    stuck, k = [], 0
    while k < 500:
        k += 1
        state.update(k=k, seen=0, raised=False)
        fork(True)
        if not state["raised"]:
            break
        fork(False)  # the program's next fork, from the same line
        for name, lock in (("claims", _box3d._running_lock), ("cache", _closure._cache_lock)):
            if lock._recursion_count() or not free_for_another_thread(lock):
                stuck.append((k, name))
                while lock._recursion_count():
                    lock.release()
    print("points", k - 1, "stuck", stuck, flush=True)
"""


def test_a_raising_signal_handler_inside_the_at_fork_handlers_leaves_no_lock_held():
    """Data-loss round seven's "not fixed": a signal handler that raises inside dodo's at-fork handlers
    (Python prints "Exception ignored" and forks on) between a count taken and noted, or before the
    after-handler gave it back, left the claims' or the cache's lock held by the forking thread for good:
    another thread's dodo call then waited on it. Interrupted at each line the handlers run in turn (6 of
    10 points left a lock held before), then forked once more: both locks are free for another thread."""
    result = run_child(FORK_HANDLERS_INTERRUPTED, timeout=300)
    line = next((line for line in result.stdout.splitlines() if line.startswith("points")), result.stdout + result.stderr[-3000:])
    assert line.endswith("stuck []") and not line.startswith("points 0 "), line


# --- the ONNX Runtime library named by a bare file name beside the user -----------------------------

def test_a_bare_library_name_of_a_file_in_the_current_directory_says_the_loader_never_looks_there(tmp_path):
    """`dodo.Closure(onnxruntime_library="libonnxruntime.so.1.32.0")` (or the variable) run beside that
    file: dlopen looks a name without a '/' up in the loader's directories only, and the refusal said
    "cannot open shared object file: No such file or directory" of a file that is right there. Now it says
    why and to write ./NAME. (A fresh interpreter: a process that loaded ONNX Runtime keeps it.)"""
    _needs_runtime()
    import subprocess
    import sys

    (tmp_path / "libonnxruntime.so.1.32.0").write_bytes(b"\x7fELF not really")
    hint = ("libonnxruntime.so.1.32.0 is a file in the current directory, but a library name without a '/' is "
            "looked for by the dynamic loader in its directories (LD_LIBRARY_PATH, the system's), never in the "
            "current directory: give ./libonnxruntime.so.1.32.0 or its absolute path")
    script = "import dodo\ntry:\n    dodo.Closure({})\nexcept RuntimeError as error:\n    print(error)\n"
    for argument, env in (("onnxruntime_library='libonnxruntime.so.1.32.0'", {}),
                          ("", {"DODO_ONNXRUNTIME_LIBRARY": "libonnxruntime.so.1.32.0"})):
        result = subprocess.run([sys.executable, "-c", script.format(argument)], cwd=tmp_path, capture_output=True,
                                text=True, env={**os.environ, **env}, timeout=300)
        assert "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE" in result.stdout and hint in result.stdout, result.stdout + result.stderr


def test_dodo_info_says_a_bare_library_name_is_not_looked_for_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "libonnxruntime.so.1.32.0").write_bytes(b"\x7fELF not really")
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", "libonnxruntime.so.1.32.0")
    code, out, _ = run(capsys, ["info"])
    line = next(line for line in out.splitlines() if line.startswith("onnxruntime_library:"))
    assert code == 0 and "never in the current directory: give ./libonnxruntime.so.1.32.0" in line, line
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", "libonnxruntime.so.1")  # no such file here: not judged, as before
    code, out, _ = run(capsys, ["info"])
    assert "current directory" not in out


# --- an output name with white space at an end -------------------------------------------------------

def test_an_output_name_with_white_space_at_an_end_is_shown_quoted(tmp_path, monkeypatch, capsys):
    """`dodo apply D -o "out.h5 "` (a quoted line of a job script): "cells written to out.h5 ", the space
    unseen, and the file opened later as out.h5 was not there. Such names are shown as Python's repr
    writes them, as round 49 shows names holding a newline; a space inside a name is shown as before."""
    _needs_runtime()
    monkeypatch.chdir(tmp_path)
    emu_file("cells.h5", to_emu_layout(_cells(2)))
    code, out, err = run(capsys, ["apply", "cells.h5", "--grid", "2x1x1", "-o", "o.h5 "])
    assert code == 0 and "cells written to 'o.h5 '" in out + err, out + err
    code, out, err = run(capsys, ["score", "box3d", "cells.h5", "--json", " r.json"])
    assert code == 0 and "wrote ' r.json'" in out + err, out + err
    assert sorted(os.listdir(tmp_path)) == [" r.json", "cells.h5", "o.h5 "]
    (tmp_path / "c ells.h5").write_bytes((tmp_path / "cells.h5").read_bytes())
    code, out, err = run(capsys, ["score", "box3d", "c ells.h5"])
    assert code == 0 and "box3d on c ells.h5 (" in out, out


def test_the_layout_conversions_keep_the_unit_check():
    """`from_emu_layout(emu * u.m**-3)` (Emu data read with units, converted by the documented call) gave a
    plain array of the m^-3 numbers, which the closure then read as cm^-3: the unit check of dodo.box3d
    was passed by the conversion. The conversions and total_density now take units as dodo.box3d does."""
    from dodo.conventions import from_emu_layout, total_density

    F = _cells(2)
    emu = to_emu_layout(F)
    for call, words in ((lambda: from_emu_layout(_AstropyLikeQuantity(emu * 1e6, "1 / m3")), 'give emu.to_value("cm**-3")'),
                        (lambda: to_emu_layout(_PintLikeQuantity(F * 1e6, "1 / meter ** 3")), 'give F.m_as("cm**-3")'),
                        (lambda: total_density(_AstropyLikeQuantity(F * 1e6, "1 / m3")), 'give F.to_value("cm**-3")')):
        with pytest.raises(ValueError, match="is a quantity in .*a rate 1e\\+06 times the true one") as refusal:
            call()
        assert str(refusal.value).endswith(words), refusal.value
    assert np.array_equal(from_emu_layout(_AstropyLikeQuantity(emu, "1 / cm3")), F)
    assert np.array_equal(total_density(_AstropyLikeQuantity(F, "1 / cm3")), total_density(F))


# --- dodo score of a truth row with a non-finite flux -------------------------------------------------

def test_dodo_score_leaves_out_a_truth_row_with_an_infinite_flux_as_dodo_apply_does(tmp_path, monkeypatch, capsys):
    """A state whose F4_final holds Inf (or NaN) in a flux component but finite densities (a damaged
    truth row) was scored on its densities, with no note, while the truth-conservation check skipped it
    because "the score leaves them out anyway"; `dodo apply` leaves such a cell out. Now left out, with
    the reason `non-finite truth (F4_final)`."""
    import json

    monkeypatch.chdir(tmp_path)
    initial = to_emu_layout(_cells(4))
    final = initial.copy()
    final[2, 0, 0, 0] = np.inf  # x flux of nu_e in state 2
    final[3, 1, 1, 2] = np.nan  # y flux of nubar_tau in state 3
    emu_file("cells.h5", initial, final)
    code, out, err = run(capsys, ["score", "box3d", "cells.h5"])
    assert code == 0 and "states scored: 2 of 4 (2 left out of every number below, growth ratios included: 2 with a " \
        "non-finite truth (F4_final))" in out, out + err
    code, out, err = run(capsys, ["score", "box3d", "cells.h5", "--json"])
    report = json.loads(out)
    assert code == 0 and report["n_scored"] == 2 and report["left_out"]["indices"] == [2, 3], out
    assert report["per_state"]["model"][2] is None and report["per_state"]["model"][3] is None


# --- a name in the other Unicode form ----------------------------------------------------------------

def test_a_name_in_the_other_unicode_form_names_the_file_there(tmp_path, monkeypatch, capsys):
    """`modèle.onnx` typed (NFC: è one character) for a package that macOS named in NFD (e and a combining
    accent), copied to Linux: "does not exist", the two names printing alike. Now the file there and the
    name given, both escaped, and that they differ in Unicode form only (as round 49 names letter case)."""
    import shutil
    import unicodedata

    from dodo.models import default_model_path

    monkeypatch.chdir(tmp_path)
    shutil.copy(default_model_path(), unicodedata.normalize("NFD", "modèle.onnx"))
    emu_file(unicodedata.normalize("NFD", "données.h5"), to_emu_layout(_cells(2)))
    words = "file names differ in their Unicode form only"
    with pytest.raises(FileNotFoundError) as refusal:
        dodo.Closure(unicodedata.normalize("NFC", "modèle.onnx"))
    assert "('mode\\u0300le.onnx' exists, and 'mod\\xe8le.onnx' was given: " + words in str(refusal.value), refusal.value
    code, _, err = run(capsys, ["score", "box3d", unicodedata.normalize("NFC", "données.h5")])
    assert code == 2 and "'donne\\u0301es.h5' exists" in err and words in err, err
    with pytest.raises(FileNotFoundError, match="differ in letter case here"):  # round 49's case keeps its words
        dodo.Closure(unicodedata.normalize("NFD", "MODÈLE.onnx"))


def test_dodo_info_names_the_kind_of_a_library_variable_that_is_no_regular_file(monkeypatch, capsys):
    """`DODO_ONNXRUNTIME_LIBRARY=/dev/null dodo info`: `NOT FOUND: not a regular file`, not saying which."""
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", os.devnull)
    code, out, _ = run(capsys, ["info"])
    assert code == 0 and "NOT FOUND: not a regular file (a character device), so a closure" in out, out
