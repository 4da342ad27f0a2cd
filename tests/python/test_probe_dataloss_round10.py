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


KILL_FIT = '''
import os, signal, time
import torch


def fit_then_kill_the_parent(X, seed):
    if seed == 1:  # the run ended by SIGKILL while its members are fitted (the OOM killer)
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)
    return torch.nn.Linear(1, 1)


def fit(X, seed):
    return torch.nn.Linear(1, 1)
'''


def test_a_member_folder_left_by_a_killed_run_is_removed_by_the_next(tmp_path, monkeypatch):
    # `dodo train-ensemble --set ensemble.processes=2` SIGKILLed (the OOM killer, a batch system's kill)
    # while its members were fitted: its private folder in the temporary directory (the training pool's
    # arrays as .npy, the members fitted so far) stayed there, one more per kill, and no later run removed
    # it. Now the next run removes the folders of runs on this host that no longer run; a running one's
    # (here: this process's own name) is kept.
    pytest.importorskip("torch")
    import os
    import socket
    import tempfile

    from dodo.training.member_processes import fit_members

    (tmp_path / "killfit.py").write_text(KILL_FIT)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import killfit\n"
            "from dodo.training.member_processes import fit_members\n"
            "fit_members(killfit.fit_then_kill_the_parent, {'X': np.zeros((4, 2))}, [{'seed': 0}, {'seed': 1}], "
            "processes=2)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TMPDIR": str(temporary)})
    assert killed.returncode == -9, killed.stderr
    left = [p for p in temporary.iterdir() if p.name.startswith("dodo-members-")]
    assert len(left) == 1 and (left[0] / "X.npy").exists(), left  # what SIGKILL left
    host = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname()) or "host"
    running = temporary / f"dodo-members-{host}.{os.getpid()}.keepme"  # a run still going (this process)
    running.mkdir()
    (running / "X.npy").write_bytes(b"x")

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    import killfit

    members = fit_members(killfit.fit, {"X": np.zeros((4, 2))}, [{"seed": 0}, {"seed": 1}], processes=2)
    assert len(members) == 2
    assert sorted(p.name for p in temporary.iterdir()) == [running.name], list(temporary.iterdir())
    assert (running / "X.npy").read_bytes() == b"x"
