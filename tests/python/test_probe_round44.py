"""Outside probe, round forty-four (docs/reliability_python.md section 59): the Python API and the
run-time commands (`dodo apply`, `dodo score`, `dodo info`). Each test failed on the code before
its fix, except those marked as guards."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from cli_helpers import refused, run

import dodo  # noqa: E402
from dodo import _atomic  # noqa: E402

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
#: np.longdouble wider than float64 (x86's 80-bit extended, a 128-bit quad); on some platforms it is float64.
wide_longdouble = pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max,
                                     reason="np.longdouble is float64 on this platform")


def _crossing_cells(n: int = 4) -> np.ndarray:
    F = np.zeros((n, 6, 4))
    F[:, 0] = [1.0, 0, 0, 0.5]
    F[:, 3] = [1.0, 0, 0, -0.5]
    F[:, [1, 2, 4, 5], 0] = 0.3
    return F


def _emu(path, F=None, dtype=np.float64):
    pytest.importorskip("h5py")
    from cli_helpers import emu_file
    from dodo.conventions import to_emu_layout

    emu = to_emu_layout(_crossing_cells() if F is None else F).astype(dtype)
    return emu_file(path, emu)


# --- An output directory that makes no files -----------------------------------------------------

def _directory_that_makes_no_files(monkeypatch):
    """Creating a file fails with ENOENT in a directory that is there, as /proc answers everyone (the
    tests may not run as root, and /proc is not on every system)."""
    def refuse(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(_atomic.tempfile, "mkstemp", refuse)


@needs_runtime
@pytest.mark.parametrize("command", ["score", "apply"])
def test_an_output_whose_directory_makes_no_files_is_refused_before_the_work(tmp_path, capsys, monkeypatch, command):
    """`dodo score M D --json /proc/r.json` and `dodo apply D -o /proc/x.h5` as root (os.access says
    yes to root) did their whole work, then failed at the write with `cannot create a file in /proc:
    the directory keeps disappearing`, of a directory that is there; score printed its table first."""
    data = str(_emu(tmp_path / "d.h5"))
    out = tmp_path / "out.file"
    argv = {"score": ["score", "box3d", data, "--bootstrap", "100", "--json", str(out)],
            "apply": ["apply", data, "--model", "box3d", "--grid", "2x2x1", "-q", "-o", str(out)]}[command]
    _directory_that_makes_no_files(monkeypatch)
    code, stdout, err = run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write {out}" in lines[0] and "refuses new files" in lines[0], lines[0]
    assert "keeps disappearing" not in lines[0] and ".tmp" not in lines[0], lines[0]
    assert stdout == "", stdout  # refused before the work: no table, no report
    assert not out.exists()


@needs_runtime
@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"), reason="needs /proc")
def test_dodo_score_into_proc_is_refused_before_the_scoring(tmp_path, capsys):
    """The same, for real: /proc refuses every new file (ENOENT as root; no write permission for others)."""
    data = str(_emu(tmp_path / "d.h5"))
    code, stdout, err = run(capsys, ["score", "box3d", data, "--bootstrap", "100", "--json", "/proc/dodo_r44.json"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "cannot write /proc/dodo_r44.json" in lines[0], err
    assert "keeps disappearing" not in lines[0], lines[0]
    assert stdout == "", stdout


def test_the_trial_file_leaves_nothing_and_a_new_directory_is_still_made(tmp_path):
    """Guard: the check before the work leaves no file in the directory, and an output below
    directories still to be made is written (they are judged by the write)."""
    existing = tmp_path / "r.json"
    _atomic.check_outputs([existing, tmp_path / "new" / "sub" / "x.json"])
    assert sorted(os.listdir(tmp_path)) == []
    _atomic.write_json_atomic(tmp_path / "new" / "sub" / "x.json", {"a": 1})
    assert sorted(os.listdir(tmp_path / "new" / "sub")) == ["x.json"]


def test_the_ranks_that_do_not_write_make_no_trial_file(tmp_path, monkeypatch):
    """Guard: the MPI ranks of `dodo simulate` other than rank 0 (check_locks false) write nothing and
    make no trial file (10^4 ranks would make 10^4 files in one directory at once)."""
    _directory_that_makes_no_files(monkeypatch)
    _atomic.check_outputs([tmp_path / "db.h5"], check_locks=False)
    with pytest.raises(_atomic.OutputPathError, match="refuses new files"):
        _atomic.check_outputs([tmp_path / "db.h5"])


# --- NUL characters in paths given to the runtime ------------------------------------------------

@needs_runtime
def test_an_onnxruntime_library_path_with_a_nul_is_refused():
    """`Closure(onnxruntime_library=LIB + "\\0anything")` loaded LIB (the C text ends at the NUL)
    without a word, and `closure.onnxruntime` named "LIB\\x00anything" as the library in use; with
    "box3d" the option was taken without a look."""
    library = dodo._closure.onnxruntime_library_path() or "/usr/lib/libonnxruntime.so"
    for model in (None, "box3d"):
        with pytest.raises(ValueError, match=r'onnxruntime_library ".*\\x00anything" holds a NUL character'):
            dodo.Closure(model, onnxruntime_library=library + "\0anything")


@needs_runtime
def test_a_model_path_with_a_nul_is_called_that():
    """A model path with a NUL was said not to exist, of a file that does (the name before the NUL)."""
    from dodo.models import default_model_path

    with pytest.raises(ValueError, match="holds a NUL character, which no file name can"):
        dodo.Closure(str(default_model_path()) + "\0")
    with pytest.raises(ValueError, match="holds a NUL character"):
        dodo.closure(_crossing_cells(), model=str(default_model_path()) + "\0x")


# --- --threads of the run-time commands ----------------------------------------------------------

@needs_runtime
@pytest.mark.parametrize("command", ["apply", "score"])
def test_threads_beyond_the_closures_bound_name_the_option_and_its_true_bound(tmp_path, capsys, command):
    """`dodo apply --threads 5000`: apply's own check allowed up to 2147483647 ("--threads must be an
    integer from 0 to 2147483647"), then the closure said `threads must be an integer in [0, 1024]`,
    naming no option; `dodo score --threads 5000` likewise, after reading every data file."""
    data = str(_emu(tmp_path / "d.h5"))
    argv = {"apply": ["apply", data, "--model", "box3d", "--grid", "1x1x1", "--threads", "5000"],
            "score": ["score", "box3d", data, "--threads", "5000"]}[command]
    refused(capsys, argv, "--threads must be an integer from 0 to 1024", "got 5000")
    refused(capsys, argv[:-1] + ["-1"], "--threads must be an integer from 0 to", "got -1")
    code, _, err = run(capsys, argv[:-1] + ["1024"] + (["--bootstrap", "100"] if command == "score" else ["-q"]))
    assert code == 0, err  # the bound itself is taken (guard)


# --- Wider floats than float64 --------------------------------------------------------------------

@wide_longdouble
def test_long_double_values_beyond_float64_are_refused_not_zeroed():
    """A np.longdouble F_init holding 1e400 (finite) became inf with NumPy's RuntimeWarning, and the
    cell came back as zeros flagged NONFINITE ("NaN or Inf in the cell's F"), which it did not hold."""
    F = _crossing_cells(3).astype(np.longdouble)
    F[1, 3, 0] = np.longdouble("1e400")
    with pytest.raises(ValueError, match=r"F_init holds 1\.e\+400 at cell \(1,\) \(index \(1, 3, 0\)\), beyond the "
                                         r"range of float64"):
        dodo.box3d(F)
    with pytest.raises(ValueError, match="beyond the range of float64"):
        dodo.invariants(F)
    u = np.array([1.0, 0, 0, 0], dtype=np.longdouble)
    u[0] = np.longdouble("1e4000")
    with pytest.raises(ValueError, match="u holds .* beyond the range of float64.*no four-velocity"):
        dodo.comoving_density(_crossing_cells(3), u)


@wide_longdouble
@needs_runtime
def test_long_double_values_beyond_float64_are_refused_by_the_closure():
    F = _crossing_cells(3).astype(np.longdouble)
    F[2, 0, 0] = -np.longdouble("1e309")
    with pytest.raises(ValueError, match=r"F_init holds -1\.e\+309 at cell \(2,\)"):
        dodo.Closure("box3d").apply(F)


@wide_longdouble
@needs_runtime
def test_long_double_values_within_float64_give_the_float64_answer():
    """Guard: a np.longdouble input in float64's range is taken as its float64 rounding, as before."""
    F = _crossing_cells(3)
    closure = dodo.Closure("box3d", threads=1)
    wide, narrow = closure.apply(F.astype(np.longdouble)), closure.apply(F)
    assert all(np.array_equal(a, b) for a, b in zip(wide, narrow))


@wide_longdouble
@needs_runtime
@pytest.mark.parametrize("command", ["score", "apply"])
def test_a_file_of_long_doubles_beyond_float64_names_the_dataset_and_row(tmp_path, capsys, command):
    """An Emu file stored in extended precision (C's long double) with values beyond float64: NumPy's
    `RuntimeWarning: overflow encountered in cast` and its source line on stderr, then `no state can be
    scored: 4 with a non-finite input (F4_initial)` of finite values."""
    F = _crossing_cells().astype(np.longdouble) * np.longdouble("1e320")
    data = str(_emu(tmp_path / "wide.h5", F, dtype=np.longdouble))
    argv = {"score": ["score", "box3d", data, "--bootstrap", "100"],
            "apply": ["apply", data, "--model", "box3d", "--grid", "1x1x1"]}[command]
    line = refused(capsys, argv, data, "'F4_initial(1|ccm)' holds", "(row 0), beyond the range of float64")
    assert "RuntimeWarning" not in line


@needs_runtime
def test_a_file_of_long_doubles_within_float64_is_scored(tmp_path, capsys):
    """Guard: an extended-precision file whose values fit float64 is scored as before."""
    data = str(_emu(tmp_path / "wide.h5", _crossing_cells().astype(np.longdouble), dtype=np.longdouble))
    code, out, err = run(capsys, ["score", "box3d", data, "--bootstrap", "100"])
    assert code == 0 and "RuntimeWarning" not in err, err
    assert "(1 state; closure at rest" in out  # the four cells are one state, scored once


# --- dodo info ----------------------------------------------------------------------------------

def test_dodo_info_says_when_the_library_the_environment_names_is_missing(tmp_path, capsys, monkeypatch):
    """`DODO_ONNXRUNTIME_LIBRARY=/opt/ort/missing.so dodo info` showed the path without a word while
    every closure with a model failed to load it; a newline in the variable split the line in two."""
    missing = tmp_path / "libonnxruntime.so.1"
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", str(missing))
    code, out, _ = run(capsys, ["info"])
    line = next(line for line in out.splitlines() if line.startswith("onnxruntime_library:"))
    assert code == 0 and line.startswith(f"onnxruntime_library: {missing} (DODO_ONNXRUNTIME_LIBRARY; NOT FOUND"), out
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", f"{tmp_path}/a\nb.so")
    code, out, _ = run(capsys, ["info"])
    line = next(line for line in out.splitlines() if line.startswith("onnxruntime_library:"))
    assert f"{tmp_path}/a\\x0ab.so (DODO_ONNXRUNTIME_LIBRARY; NOT FOUND" in line, out
    assert not any(line.startswith("b.so") for line in out.splitlines()), out
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", str(tmp_path))  # a directory: not "no such file"
    code, out, _ = run(capsys, ["info"])
    assert "NOT FOUND: not a regular file" in out, out
    missing.write_bytes(b"")  # there (guard): not called missing; whether it loads is the closure's to say
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", str(missing))
    code, out, _ = run(capsys, ["info"])
    assert "NOT FOUND" not in out, out


# --- A dataset compressed with a filter this HDF5 lacks ------------------------------------------

def _file_with_a_missing_filter(path):
    """An Emu file whose datasets are compressed with lzf, their filter id then changed to 511 (HDF5's
    range for testing: no plugin has it), as a file written with hdf5plugin's blosc or zstd reads
    where that plugin is missing."""
    h5py = pytest.importorskip("h5py")
    from dodo.conventions import to_emu_layout

    emu = to_emu_layout(_crossing_cells(16))
    with h5py.File(path, "w") as handle:
        for name in ("F4_initial(1|ccm)", "F4_final(1|ccm)"):
            handle.create_dataset(name, data=emu, compression="lzf", chunks=(4, 4, 2, 3))
    content = bytearray(path.read_bytes())
    at = [index for index in range(len(content) - 12) if content[index:index + 2] == b"\x00\x7d"
          and content[index + 8:index + 12] == b"lzf\x00"]  # filter pipeline message: id, name length, flags, ...
    assert len(at) == 2
    for index in at:
        content[index:index + 2] = (511).to_bytes(2, "little")
    path.write_bytes(bytes(content))
    if h5py.h5z.filter_avail(511):
        pytest.skip("a plugin for HDF5 filter 511 is installed")
    return path


@needs_runtime
@pytest.mark.parametrize("command", ["score", "apply"])
def test_a_dataset_compressed_with_a_filter_hdf5_lacks_is_not_called_damaged(tmp_path, capsys, command):
    """`dodo apply`/`dodo score` of an Emu file compressed with a plugin filter that this HDF5 lacks
    (blosc, zstd: hdf5plugin's): `cannot read rows 0 to 15 of 'F4_initial(1|ccm)' (Can't synchronously read
    data (can't open directory (/usr/local/lib/plugin)...)): the file is damaged (a corrupted or truncated
    copy?)`, of a whole file."""
    data = str(_file_with_a_missing_filter(tmp_path / "packed.h5"))
    argv = {"score": ["score", "box3d", data, "--bootstrap", "100"],
            "apply": ["apply", data, "--model", "box3d", "--grid", "1x1x1"]}[command]
    line = refused(capsys, argv, data, "'F4_initial(1|ccm)' is compressed with the HDF5 filter 511", "HDF5_PLUGIN_PATH")
    assert "damaged" not in line.replace("not damaged", ""), line


def test_a_dataset_compressed_with_a_filter_hdf5_has_is_read(tmp_path, capsys):
    """Guard: lzf (bundled with h5py) and gzip are read as before."""
    h5py = pytest.importorskip("h5py")
    from dodo.conventions import to_emu_layout
    from dodo.emu_files import iter_emu_chunks

    emu = to_emu_layout(_crossing_cells(16))
    path = tmp_path / "packed.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("F4_initial(1|ccm)", data=emu, compression="lzf", chunks=(4, 4, 2, 3))
        handle.create_dataset("F4_final(1|ccm)", data=emu, compression="gzip", chunks=(4, 4, 2, 3))
    chunks = list(iter_emu_chunks(path))
    assert sum(len(chunk) for chunk in chunks) == 16
    np.testing.assert_array_equal(chunks[0].F_init, _crossing_cells(16))


# --- An external link into a FIFO, reached through a soft link --------------------------------------

#: A hang guard only: a refusal answers in the time the interpreter takes to start.
HANG_GUARD_S = 120


def _linked_into_a_fifo(tmp_path, layout: str) -> str:
    """An Emu file whose F4_initial(1|ccm) reaches an external link into a FIFO (no writer) through a
    soft link ("soft": F4 -> /g/x, x external; "relative": F4 -> /g/y, y -> x, x external), a group
    that is an external link ("group": F4 -> /g/data, g external), or a regular file whose dataset is
    such a link ("chain")."""
    h5py = pytest.importorskip("h5py")
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp_path / "pipe")
    values = np.ones((1, 4, 2, 3))
    path = tmp_path / f"{layout}.h5"
    with h5py.File(path, "w") as handle:
        handle["F4_final(1|ccm)"] = values
        if layout in ("soft", "relative"):
            group = handle.create_group("g")
            group["x"] = h5py.ExternalLink("pipe", "/data")
            group["y"] = h5py.SoftLink("x")
            handle["F4_initial(1|ccm)"] = h5py.SoftLink("/g/x" if layout == "soft" else "/g/y")
        elif layout == "group":
            handle["g"] = h5py.ExternalLink("pipe", "/group")
            handle["F4_initial(1|ccm)"] = h5py.SoftLink("/g/data")
        else:
            with h5py.File(tmp_path / "middle.h5", "w") as middle:
                middle["F4_initial(1|ccm)"] = h5py.ExternalLink("pipe", "/data")
            handle["F4_initial(1|ccm)"] = h5py.ExternalLink("middle.h5", "/F4_initial(1|ccm)")
    return str(path)


@needs_runtime
@pytest.mark.parametrize("command, layout", [("score", "soft"), ("apply", "soft"), ("score", "relative"),
                                             ("score", "group"), ("score", "chain")])
def test_an_external_link_into_a_fifo_behind_a_soft_link_is_refused_not_waited_on(tmp_path, command, layout):
    """`dodo score`/`dodo apply` of a file whose F4_initial(1|ccm) is a soft link to an external link
    into a FIFO blocked in the FIFO's open for ever, SIGTERM included (`timeout 20 dodo score ...`
    still there 10 minutes later): round 37 refused only a top-level external link."""
    import subprocess

    data = _linked_into_a_fifo(tmp_path, layout)
    argv = {"score": ["score", "box3d", data, "--bootstrap", "100"],
            "apply": ["apply", data, "--model", "box3d", "--grid", "1x1x1"]}[command]
    result = subprocess.run([sys.executable, "-m", "dodo", *argv], capture_output=True, text=True, cwd=tmp_path,
                            timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "'F4_initial(1|ccm)'" in lines[0], lines[0]
    assert "an external link into 'pipe', which is not a regular file" in lines[0], lines[0]


def test_soft_and_external_links_to_regular_files_are_still_read(tmp_path):
    """Guard: a soft link to a dataset, and an external link into a regular file reached through one,
    are read as before; a loop of soft links is HDF5's own message."""
    h5py = pytest.importorskip("h5py")
    from dodo.conventions import to_emu_layout
    from dodo.emu_files import DataFileError, iter_emu_chunks

    emu = to_emu_layout(_crossing_cells(2))
    with h5py.File(tmp_path / "store.h5", "w") as store:
        store["data/initial"] = emu
    with h5py.File(tmp_path / "linked.h5", "w") as handle:
        handle["g/x"] = h5py.ExternalLink("store.h5", "/data")
        handle["F4_initial(1|ccm)"] = h5py.SoftLink("/g/x/initial")
        handle["F4_final(1|ccm)"] = emu
        handle["a"], handle["b"] = h5py.SoftLink("/b"), h5py.SoftLink("/a")
    chunks = list(iter_emu_chunks(tmp_path / "linked.h5"))
    np.testing.assert_array_equal(chunks[0].F_init, _crossing_cells(2))
    with h5py.File(tmp_path / "loop.h5", "w") as handle:
        handle["F4_initial(1|ccm)"], handle["a"], handle["b"] = (h5py.SoftLink("/a"), h5py.SoftLink("/b"),
                                                                 h5py.SoftLink("/a"))
        handle["F4_final(1|ccm)"] = emu
    with pytest.raises(DataFileError, match="cannot be opened"):
        list(iter_emu_chunks(tmp_path / "loop.h5"))


# --- nf written as text ---------------------------------------------------------------------------

@needs_runtime
@pytest.mark.parametrize("where, value", [("attribute", "3"), ("dataset", np.bytes_(b"3")), ("attribute", True)])
def test_nf_written_as_text_is_called_text_not_a_contradiction(tmp_path, capsys, where, value):
    """An Emu file with `nf = "3"` (text) beside three flavours: `attribute 'nf' is '3' but
    'F4_initial(1|ccm)' has shape (4, 4, 2, 3), 3 flavours on its last axis; the file contradicts itself
    (damaged or edited?)`, which it did not."""
    h5py = pytest.importorskip("h5py")
    path = _emu(tmp_path / "d.h5")
    with h5py.File(path, "a") as handle:
        if where == "attribute":
            handle.attrs["nf"] = value
        else:
            handle["nf"] = value
    line = refused(capsys, ["score", "box3d", str(path), "--bootstrap", "100"], f"{where} 'nf' holds",
                   "not a number; it must be the number of flavours", "3 flavours")
    assert "contradicts" not in line, line


# --- A compressed model package ---------------------------------------------------------------------

@needs_runtime
@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "tar"])
def test_a_compressed_model_package_is_called_compressed_not_damaged(tmp_path, capsys, kind):
    """`dodo score model.onnx.gz D` (a package downloaded or copied compressed): `not an ONNX model
    (truncated or damaged file?): wire type 7 (not used by ONNX) at byte 0`, which sent the user to fetch
    a whole file again. Now the format and the command that unpacks it."""
    import bz2
    import gzip
    import lzma
    import tarfile

    from dodo.models import default_model_path

    package = default_model_path().read_bytes()
    path = tmp_path / {"gzip": "m.onnx.gz", "xz": "m.onnx.xz", "bzip2": "m.onnx.bz2", "tar": "m.tar"}[kind]
    if kind == "tar":
        with tarfile.open(path, "w") as archive:
            archive.add(default_model_path(), arcname="m.onnx")
    else:
        path.write_bytes({"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress}[kind](package))
    with pytest.raises(RuntimeError, match="is (compressed with|a tar archive).*not an ONNX model package: unpack it "
                                           "first") as raised:
        dodo.Closure(str(path))
    assert "damaged" not in str(raised.value)
    data = str(_emu(tmp_path / "d.h5"))
    line = refused(capsys, ["score", str(path), data, "--bootstrap", "100"], str(path), "unpack it first")
    assert ("a tar archive" if kind == "tar" else f"compressed with {kind}") in line, line


@needs_runtime
def test_packages_starting_like_nothing_compressed_still_load(tmp_path):
    """Guard: the shipped package (its first byte 0x08) and a copy under a .gz name load."""
    from dodo.models import default_model_path

    copy = tmp_path / "named.onnx.gz"
    copy.write_bytes(default_model_path().read_bytes())
    assert dodo.Closure(str(copy)).has_model


@needs_runtime
@pytest.mark.parametrize("command", ["score", "apply"])
def test_a_compressed_data_file_says_so(tmp_path, capsys, command):
    """`dodo score M data.h5.gz`: `not a readable HDF5 file (Unable to synchronously open file (file
    signature not found))`, nothing more. Now the same, then what it is and the command that unpacks it."""
    import gzip

    plain = _emu(tmp_path / "d.h5")
    packed = tmp_path / "d.h5.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    argv = {"score": ["score", "box3d", str(packed), "--bootstrap", "100"],
            "apply": ["apply", str(packed), "--model", "box3d", "--grid", "1x1x1"]}[command]
    refused(capsys, argv, "not a readable HDF5 file", f"it is compressed with gzip; unpack it first (gunzip {packed})")


@needs_runtime
def test_a_model_path_with_a_leading_tilde_says_python_does_not_expand_it(tmp_path, monkeypatch):
    """`dodo.Closure("~/models/m.onnx")`: `model package '~/models/m.onnx' does not exist`, of a file
    that does (the shell expands ~, Python does not)."""
    from dodo.models import default_model_path

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(default_model_path().read_bytes())
    with pytest.raises(FileNotFoundError, match=r"does not exist \(a leading ~ is the shell's: Python does not "
                                                r"expand it; '.*/models/m\.onnx' exists"):
        dodo.Closure("~/models/m.onnx")
    with pytest.raises(FileNotFoundError) as raised:  # guard: no hint where the expanded path is not there either
        dodo.Closure("~/models/other.onnx")
    assert "~ is the shell's" not in str(raised.value)


@needs_runtime
def test_growth_ratios_far_from_one_keep_their_digits(tmp_path, capsys):
    """Measured growth rates in other units than s^-1 (here per microsecond: 1e6 times larger) printed
    `median 0.000, range [0.000, 0.000]`: the factor that tells the user of the units was hidden."""
    pytest.importorskip("h5py")
    from cli_helpers import emu_file
    from dodo.conventions import to_emu_layout

    F = _crossing_cells(3) * np.array([1.0, 2.0, 3.0])[:, None, None] * 1e32  # three states, cm^-3
    proxy = dodo.box3d(F).growth_rate
    assert np.all(proxy > 0)
    path = emu_file(tmp_path / "d.h5", to_emu_layout(F), **{"growthRate(1|s)": proxy * 1e6})
    code, out, err = run(capsys, ["score", "box3d", str(path), "--bootstrap", "100"])
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.strip().startswith("box3d_proxy"))
    assert "median 1e-06, range [1e-06, 1e-06]" in line, line
    assert "0.000" not in line, line


@needs_runtime
@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2"])
def test_a_compressed_package_in_memory_is_called_compressed(kind):
    """The bytes of a model.onnx.gz (read whole, or broadcast over MPI) given to dodo.Closure: `model in
    memory (N bytes): not an ONNX model (truncated or damaged file?)`."""
    import bz2
    import gzip
    import lzma

    from dodo.models import default_model_path

    package = default_model_path().read_bytes()
    packed = {"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress}[kind](package)
    module = {"gzip": "gzip", "xz": "lzma", "bzip2": "bz2"}[kind]
    for data in (packed, bytearray(packed), np.frombuffer(packed, dtype=np.uint8)):
        with pytest.raises(RuntimeError, match=rf"model in memory \({len(packed)} bytes\) is compressed with {kind}, not "
                                               rf"an ONNX model package: unpack it first \({module}\.decompress"):
            dodo.Closure(data)
    assert dodo.Closure(package).has_model  # guard: the package itself


# --- A file system that takes no file locks ---------------------------------------------------------

@needs_runtime
@pytest.mark.parametrize("command", ["score", "apply"])
def test_a_lock_the_file_system_refuses_is_not_called_another_writer(tmp_path, capsys, monkeypatch, command):
    """HDF5 locks a file it opens for reading; on an NFS mount without a lock service the lock fails with
    ENOLCK (`unable to lock file, errno = 37, error message = 'No locks available'`), which `dodo score`
    and `dodo apply` called `another process has it open for writing ...; wait until that writer closes
    it`: no writer, no end to the wait. (The file system's refusal is stood in for: h5py.File raises what
    HDF5 raises there.) A lock held by another process (errno 11) is still called that (guard)."""
    h5py = pytest.importorskip("h5py")
    data = str(_emu(tmp_path / "d.h5"))
    argv = {"score": ["score", "box3d", data, "--bootstrap", "100"],
            "apply": ["apply", data, "--model", "box3d", "--grid", "1x1x1"]}[command]
    real_file = h5py.File

    def refusing(number, text):
        def open_file(name, mode="r", *args, **kwargs):
            if isinstance(name, (str, os.PathLike)) and os.fspath(name) == data and mode == "r":
                raise OSError(number, "Unable to synchronously open file (unable to lock file, errno = "
                                      f"{number}, error message = '{text}')")
            return real_file(name, mode, *args, **kwargs)
        return open_file

    monkeypatch.setattr(h5py, "File", refusing(37, "No locks available"))
    line = refused(capsys, argv, data, "HDF5 could not lock it for reading (No locks available, errno 37)",
                   "HDF5_USE_FILE_LOCKING=FALSE")
    assert "another process" not in line and "wait until" not in line, line
    monkeypatch.setattr(h5py, "File", refusing(11, "Resource temporarily unavailable"))
    refused(capsys, argv, data, "another process has it open for writing")


def test_a_rerun_on_a_file_system_without_locks_replaces_its_own_output(tmp_path, capsys, monkeypatch):
    """`dodo apply D -o cells.h5` run again where HDF5's read lock fails with ENOLCK: its own earlier
    output was "an HDF5 file another process has open for writing", refused without --overwrite every
    time. Now its attributes are read without the lock (no process holds it) and the rerun replaces it."""
    h5py = pytest.importorskip("h5py")
    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    data = str(_emu(tmp_path / "d.h5"))
    out = tmp_path / "cells.h5"
    argv = ["apply", data, "--model", "box3d", "--grid", "1x1x1", "-q", "-o", str(out)]
    assert run(capsys, argv)[0] == 0
    real_file = h5py.File

    def no_locks(name, mode="r", *args, **kwargs):
        if isinstance(name, (str, os.PathLike)) and os.fspath(name) == str(out) and mode == "r" and \
                kwargs.get("locking", True) is not False:
            raise OSError(37, "Unable to synchronously open file (unable to lock file, errno = 37, error message = "
                              "'No locks available')")
        return real_file(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", no_locks)
    code, _, err = run(capsys, argv)
    assert code == 0, err


def test_a_virtual_dataset_mapping_a_fifo_calls_it_a_fifo_not_missing(tmp_path):
    """A virtual dataset whose source file is a FIFO: `whose source file 'pipe' is missing: HDF5 would read
    its fill value (zeros)`, of a file that is there (refused all the same; no hang)."""
    h5py = pytest.importorskip("h5py")
    from dodo.emu_files import DataFileError, open_emu_file

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp_path / "pipe")
    layout = h5py.VirtualLayout(shape=(1, 4, 2, 3), dtype="f8")
    layout[:] = h5py.VirtualSource("pipe", "data", shape=(1, 4, 2, 3))
    with h5py.File(tmp_path / "vds.h5", "w") as handle:
        handle.create_virtual_dataset("F4_initial(1|ccm)", layout)
        handle["F4_final(1|ccm)"] = np.ones((1, 4, 2, 3))
    with pytest.raises(DataFileError, match="source file 'pipe' is not a regular file \\(a FIFO"):
        open_emu_file(tmp_path / "vds.h5")


@needs_runtime
def test_a_model_url_says_dodo_reads_local_files():
    """`dodo.Closure("https://host/model.onnx")`: `model package 'https://host/model.onnx' does not exist`."""
    with pytest.raises(FileNotFoundError, match="a URL: dodo reads local files; download the package first"):
        dodo.Closure("https://example.org/models/model.onnx")
