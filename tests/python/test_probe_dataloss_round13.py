"""Outside probe, data-loss round thirteen: round twelve's open items (docs/reliability_python.md, section 102)
and what was new (docs/reliability_python.md, section 108).

- A process forked during an atomic write (another thread's `multiprocessing`) inherited the temporary's
  descriptor and its shared flock: the file renamed into place stayed flocked until that child ended, and an
  exclusive lock of it (an HDF5 writer's) was refused meanwhile.
Hang guards only: no test waits on time."""
from __future__ import annotations

import fcntl
import os

import pytest

import dodo._atomic as atomic


def test_a_child_forked_during_a_write_does_not_keep_the_written_file_locked(tmp_path):
    """A child forked while the temporary is written (it holds a copy of the descriptor) still runs when the
    file is renamed into place. Before: the shared flock lived on in the child, and an exclusive flock of the
    output (what HDF5 takes to write it) was refused (BlockingIOError) until the child ended."""
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork")
    out = tmp_path / "out.bin"
    release_r, release_w = os.pipe()
    with atomic.atomic_path(out) as tmp:
        tmp.write_bytes(b"written")
        child = os.fork()
        if child == 0:  # holds the inherited descriptors until the parent lets it go
            try:
                os.close(release_w)
                os.read(release_r, 1)
            finally:
                os._exit(0)
    os.close(release_r)
    try:
        assert out.read_bytes() == b"written"
        descriptor = os.open(out, os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raised BlockingIOError before
        finally:
            os.close(descriptor)
    finally:
        os.close(release_w)
        os.waitpid(child, 0)
