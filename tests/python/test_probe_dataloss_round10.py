"""Outside probe, data-loss round ten: a read that ran out of memory is not called a damaged file.

HDF5's `memory allocation failed for raw data chunk` (a big chunk read under an address-space limit,
`ulimit -v`) was reported by `dodo train`/`evaluate` (training.dataset.read_dataset) and `dodo qke
validate` (qke.validate._reference_file) as "the file is damaged (a corrupted or truncated copy?)", with
the advice to re-run dodo preprocess, of a whole file. Each test reads a real file in a child process
whose address-space limit is set just above what it already uses, so the 64 MiB chunk cannot be
allocated."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
resource = pytest.importorskip("resource")

CHUNK = 2 ** 23  # float64s: one 64 MiB chunk


@pytest.fixture
def big_chunk_file(tmp_path):
    """A whole HDF5 file whose only chunk is 64 MiB, with the shuffle filter (so HDF5 must allocate the
    chunk to read any element of it)."""
    path = tmp_path / "pre.h5"
    with h5py.File(path, "w") as f:
        data = f.create_dataset("F_init", shape=(CHUNK,), dtype="f8", chunks=(CHUNK,), shuffle=True)
        data[:3] = np.arange(3.0)
    return path


def _run_limited(body: str) -> str:
    """Run ``body`` (which defines read()) in a child with RLIMIT_AS 24 MiB above its own size."""
    code = "import resource, sys\n" + textwrap.dedent(body) + textwrap.dedent("""
        size = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize:")).split()[1])
        limit = (size + 24 * 1024) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            read()
        except Exception as error:
            print(type(error).__name__ + ": " + str(error))
        else:
            print("READ OK")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_read_dataset_out_of_memory_is_not_a_damaged_file(big_chunk_file):
    out = _run_limited(f"""
        import h5py
        from dodo.training.dataset import read_dataset
        handle = h5py.File({str(big_chunk_file)!r}, "r")
        def read():
            read_dataset(handle, "F_init", slice(0, 3))
    """)
    if "READ OK" in out:
        pytest.skip("this HDF5 read the chunk without allocating it")
    assert "DataFileError" in out and "memory allocation failed" in out, out
    assert "not enough memory" in out and "ulimit -v" in out and "not damaged" in out, out
    assert "is damaged" not in out and "re-run dodo preprocess" not in out, out
    with h5py.File(big_chunk_file, "r") as f:  # and the file is whole
        assert list(f["F_init"][:3]) == [0.0, 1.0, 2.0]


def test_validate_reference_out_of_memory_is_not_a_damaged_file(big_chunk_file):
    out = _run_limited(f"""
        from dodo.qke.validate import _reference_file
        def read():
            with _reference_file({str(big_chunk_file)!r}, "emu_nsm1_1d.h5") as f:
                f["F_init"][0:3]
    """)
    if "READ OK" in out:
        pytest.skip("this HDF5 read the chunk without allocating it")
    assert "ValueError" in out and "memory allocation failed" in out, out
    assert "not enough memory" in out and "ulimit -v" in out and "not damaged" in out, out
    assert "is damaged" not in out and "truncated copy" not in out, out


def test_read_dataset_damaged_chunk_still_called_damaged(tmp_path):
    """The other OSErrors keep their words: a chunk whose bytes were overwritten is a damaged file."""
    from dodo.training.dataset import read_dataset
    from dodo.training.readers import DataFileError

    path = tmp_path / "pre.h5"
    with h5py.File(path, "w") as f:
        data = f.create_dataset("F_init", data=np.arange(4096.0), chunks=(4096,), compression="gzip")
        offset = data.id.get_offset() if data.id.get_offset() is not None else data.id.get_chunk_info(0).byte_offset
        size = data.id.get_chunk_info(0).size
    raw = bytearray(path.read_bytes())
    raw[offset:offset + size] = b"\xff" * size
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as handle, pytest.raises(DataFileError, match="is damaged"):
        read_dataset(handle, "F_init", slice(0, 3))


@pytest.mark.parametrize("reader", ["closed", "open"])
def test_a_learning_curve_without_json_or_plot_whose_reader_went_away_does_not_end_with_0(ensemble_run, reader):
    # `dodo learning-curve --config C | true` (no --json, no --plot): the per-size lines printed are the
    # command's only record of the cross-validation. With the reader gone they were dropped as progress
    # lines are, after "note: ... its files and logs are written as usual", and the command ended with 0
    # (section 88 fixed `--json -` alone). A reader that stays gets the lines and 0, as before.
    pytest.importorskip("torch")
    process = subprocess.Popen([sys.executable, "-m", "dodo", "learning-curve", "--config", str(ensemble_run["config"]),
                                "--sizes", "10", "--folds", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if reader == "closed":
        process.stdout.close()  # the reader gone before the table is printed
        _, err = process.communicate(timeout=600)
        assert process.returncode == 2, err
        assert "the table (its per-size lines) was not written" in err and "--json FILE" in err, err
    else:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert "CV model" in out, out
    assert "Traceback" not in err, err
