"""Readers, hygiene filters, synthetic data and the preprocessed file (data.md)."""
import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
pytest.importorskip("yaml")

import dodo
from dodo.conventions import to_emu_layout
from dodo.training.config import FiltersConfig, PreprocessConfig
from dodo.training.conservation import conservation_violation
from dodo.training.preprocess import preprocess, read_preprocessed_attrs
from dodo.training.readers import DataFileError, average_mu_tau_change, iter_emu_chunks, apply_hygiene
from dodo.training.synth import known_correction_factor, random_initial_states, write_synthetic_database


def write_emu(path, F_init, F_final, growth=None):
    with h5py.File(path, "w") as out:
        out["F4_initial(1|ccm)"] = to_emu_layout(F_init)
        out["F4_final(1|ccm)"] = to_emu_layout(F_final)
        out["growthRate(1|s)"] = np.ones(len(F_init)) if growth is None else growth
        out["nf"] = 3


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "synth.h5"
    summary = write_synthetic_database(path, 300, seed=3)
    return path, summary


def test_synthetic_final_states_conserve_and_are_realizable(synthetic):
    path, summary = synthetic
    assert summary["crossing_fraction"] > 0.8
    chunk = next(iter_emu_chunks(path))
    ntot = chunk.F_init[..., 0].sum(axis=1)
    assert (conservation_violation(chunk.F_final - chunk.F_init) / ntot).max() < 1e-12
    margin = chunk.F_final[..., 0] - np.linalg.norm(chunk.F_final[..., 1:], axis=-1)
    assert margin.min() > -1e-9 * ntot.min()
    with h5py.File(path) as handle:
        assert bool(handle.attrs["synthetic"]) and "tanh" in handle.attrs["recipe"]


def test_synthetic_correction_is_the_documented_one(synthetic):
    path, _ = synthetic
    chunk = next(iter_emu_chunks(path))
    F_box = dodo.box3d(chunk.F_init).F_box
    s = known_correction_factor(chunk.F_init)
    assert 0.5 < s.min() and s.max() < 0.9
    expected = chunk.F_init + s[:, None, None] * (F_box - chunk.F_init)
    ntot = chunk.F_init[..., 0].sum(axis=1)[:, None, None]
    assert np.max(np.abs(chunk.F_final - expected) / ntot) < 1e-12


def test_emu_layout_is_converted_at_the_boundary(tmp_path):
    F = random_initial_states(np.random.default_rng(0), 4)
    write_emu(tmp_path / "x.h5", F, F)
    with h5py.File(tmp_path / "x.h5") as handle:  # the file holds (x, y, z, t): t last
        assert np.allclose(handle["F4_initial(1|ccm)"][:, 3, 0, 0], F[:, 0, 0])
    chunk = next(iter_emu_chunks(tmp_path / "x.h5"))
    assert np.array_equal(chunk.F_init, F)


def test_each_hygiene_filter_is_counted_and_switchable(tmp_path):
    rng = np.random.default_rng(5)
    F = random_initial_states(rng, 10, max_flux_factor=0.5)
    final = F.copy()
    F[0, 0, 0] = np.nan                      # non-finite -> dropped
    F[1, 4, 0] = -1e-3 * F[1, 4, 0]          # negative density -> clamped (then flux factor inf -> dropped)
    F[1, 4, 1:] = 0.0                        # ... but with zero flux it stays
    final[1] = F[1]
    final[2, 0, 0] *= 1.1                    # breaks conservation -> dropped
    F[3, 3, 1:] = F[3, 3, 0] * np.array([0.95, 0, 0])  # flux factor 0.95 -> dropped
    final[3] = F[3]
    write_emu(tmp_path / "bad.h5", F, final)
    chunk = next(iter_emu_chunks(tmp_path / "bad.h5"))
    kept, counts = apply_hygiene(chunk, FiltersConfig())
    assert counts.as_dict() == {"rows_read": 10, "nonfinite_dropped": 1, "negative_density_clamped": 1,
                                "conservation_dropped": 1, "flux_factor_dropped": 1, "box3d_rejected_dropped": 0,
                                "rows_kept": 7}
    assert kept.F_init[:, :, 0].min() >= 0
    chunk = next(iter_emu_chunks(tmp_path / "bad.h5"))
    off = FiltersConfig(drop_conservation_violation=False, drop_high_flux_factor=False)
    _, counts = apply_hygiene(chunk, off)
    assert counts.conservation_dropped == 0 and counts.flux_factor_dropped == 0 and counts.rows_kept == 9


def test_mu_tau_averaging_of_the_change_keeps_every_law():
    rng = np.random.default_rng(9)
    F_init = random_initial_states(rng, 20, heavy_symmetric=False)
    change = (np.eye(24) - np.linalg.pinv(_constraints()) @ _constraints()) @ rng.normal(size=(24, 20))
    F_final = F_init + 0.01 * change.T.reshape(20, 6, 4) * F_init[..., 0].sum(1)[:, None, None]
    averaged = average_mu_tau_change(F_init, F_final)
    assert np.allclose(averaged[:, 1] - F_init[:, 1], averaged[:, 2] - F_init[:, 2])
    assert (conservation_violation(averaged - F_init) / F_init[..., 0].sum(1)).max() < 1e-12


def _constraints():
    from dodo.training.conservation import conservation_constraints

    return conservation_constraints()


def test_preprocess_writes_the_data_md_layout_atomically(tmp_path, synthetic):
    path, _ = synthetic
    config = PreprocessConfig(inputs=[str(path)], output=str(tmp_path / "pre.h5"))
    summary = preprocess(config, progress=False, log=lambda *_: None)
    assert summary["rows_written"] == 300
    assert [p.name for p in tmp_path.iterdir()] == ["pre.h5"]  # no temporary left behind
    with h5py.File(tmp_path / "pre.h5") as handle:
        for name, shape in {"F_init": (6, 4), "F_true": (6, 4), "F_box": (6, 4), "invariants": (27,),
                            "residual": (24,), "u": (4,), "growth_rate": (), "sim_id": (), "dirname": ()}.items():
            assert handle[name].shape == (300,) + shape, name
        assert np.allclose(handle["residual"][:].reshape(-1, 6, 4), handle["F_true"][:] - handle["F_box"][:])
        assert np.allclose(handle["invariants"][:], dodo.invariants(handle["F_init"][:]))
    attrs = read_preprocessed_attrs(tmp_path / "pre.h5")
    assert attrs["box3d"] == dodo.box3d_settings()
    assert attrs["data_kind"] == "synthetic" and attrs["filter_counts"]["rows_kept"] == 300
    assert len(json.loads(json.dumps(attrs["sources"]))[0]["sha256"]) == 64


def test_bad_input_files_fail_with_clear_messages(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataFileError, match="not a readable HDF5"):
        next(iter_emu_chunks(tmp_path / "text.h5"))
    with h5py.File(tmp_path / "empty.h5", "w") as out:
        out["something"] = 1
    with pytest.raises(DataFileError, match="missing dataset 'F4_initial"):
        next(iter_emu_chunks(tmp_path / "empty.h5"))
    with h5py.File(tmp_path / "shape.h5", "w") as out:
        out["F4_initial(1|ccm)"] = np.zeros((3, 5, 2, 3))
        out["F4_final(1|ccm)"] = np.zeros((3, 5, 2, 3))
    with pytest.raises(DataFileError, match="expected \\[nsims, 4"):
        next(iter_emu_chunks(tmp_path / "shape.h5"))
    # The Emu layout with its axes reversed (a column-major writer's) is named so (Python round 54).
    with h5py.File(tmp_path / "reversed.h5", "w") as out:
        out["F4_initial(1|ccm)"] = np.zeros((3, 2, 4, 3))
        out["F4_final(1|ccm)"] = np.zeros((3, 2, 4, 3))
    with pytest.raises(DataFileError, match="with its axes in reverse order"):
        next(iter_emu_chunks(tmp_path / "reversed.h5"))
    with pytest.raises(DataFileError, match="matches no file"):
        preprocess(PreprocessConfig(inputs=[str(tmp_path / "missing*.h5")], output=str(tmp_path / "o.h5")), progress=False)
    with pytest.raises(DataFileError, match="not a Dodo preprocessed file"):
        read_preprocessed_attrs(tmp_path / "empty.h5")


def test_streamed_rows_equal_in_memory_rows(tmp_path, synthetic):
    pytest.importorskip("torch")
    from dodo.training.dataset import CellDataset, make_splits

    path, _ = synthetic
    preprocess(PreprocessConfig(inputs=[str(path)], output=str(tmp_path / "p.h5")), progress=False, log=lambda *_: None)
    splits = make_splits(300, 0.8, 0.1, seed=1)
    assert len(set(splits.train) | set(splits.val) | set(splits.test)) == 300
    memory = CellDataset(tmp_path / "p.h5", splits.train)
    streamed = CellDataset(tmp_path / "p.h5", splits.train, in_memory=False)
    positions = [17, 3, 3, 200, 0]
    for a, b in zip(memory.__getitems__(positions), streamed.__getitems__(positions)):
        assert np.array_equal(a.numpy(), b.numpy())
    invariants, F_init, F_box, dF_true, weight = memory.__getitems__(list(range(len(memory))))
    assert np.allclose(F_init[..., 0].sum(-1).numpy(), 1.0, atol=1e-6)  # units of N_tot
    assert np.all(weight.numpy() == 1.0)


def test_an_interrupted_preprocess_leaves_no_file(tmp_path, synthetic, monkeypatch):
    import dodo.training.preprocess as module

    path, _ = synthetic
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = module._process_chunk
    monkeypatch.setattr(module, "_process_chunk", failing)
    config = PreprocessConfig(inputs=[str(path)], output=str(tmp_path / "pre.h5"), chunk_size=100)
    with pytest.raises(KeyboardInterrupt):
        preprocess(config, progress=False, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_data_kind_says_where_the_rows_came_from(tmp_path, synthetic):
    path, _ = synthetic
    F = random_initial_states(np.random.default_rng(2), 5)
    write_emu(tmp_path / "emu.h5", F, F)
    write_emu(tmp_path / "qke.h5", F, F)
    with h5py.File(tmp_path / "qke.h5", "a") as handle:
        handle.attrs["solver"] = "dodo.qke fast-flavour QKE solver (docs/qke.md)"
    kinds = {}
    for name, inputs in {"emu": ["emu.h5"], "qke": ["qke.h5"], "mix": ["emu.h5", "qke.h5"]}.items():
        config = PreprocessConfig(inputs=[str(tmp_path / i) for i in inputs], output=str(tmp_path / f"{name}_p.h5"))
        kinds[name] = preprocess(config, progress=False, log=lambda *_: None)["data_kind"]
    assert kinds == {"emu": "emu", "qke": "qke", "mix": "emu+qke"}


def test_nu_nubar_mirror_is_the_same_physics_with_species_exchanged():
    """The augmentation's mirror (data.augment_nu_nubar) equals recomputing everything for the
    swapped cell: invariants from the core, Box3D from the core, the target swapped."""
    from dodo.training.dataset import nu_nubar_swapped, rest_frame_arrays

    F = random_initial_states(np.random.default_rng(5), 64)
    u = np.tile([1.0, 0.0, 0.0, 0.0], (len(F), 1))
    F_true = F.copy()
    F_true[:, :, 0] += 0.01 * np.array([-1, 0.5, 0.5, -1, 0.5, 0.5]) * F[:, :, 0].sum(axis=1, keepdims=True)
    swap = [3, 4, 5, 0, 1, 2]
    arrays = rest_frame_arrays(F, dodo.box3d(F).F_box, F_true, u, dodo.invariants(F))
    direct = rest_frame_arrays(F[:, swap], dodo.box3d(F[:, swap]).F_box, F_true[:, swap], u,
                               dodo.invariants(F[:, swap]))
    mirror = nu_nubar_swapped(arrays)
    for name in ("invariants", "F_init_rest", "F_box_rest", "dF_true_rest", "cell_weight"):
        np.testing.assert_allclose(mirror[name], direct[name], rtol=0, atol=1e-10, err_msg=name)
    assert not np.allclose(mirror["invariants"], arrays["invariants"])  # the swap does something


# --- issue 11: lost data and crashes on bad files or a full disk -------------------------------

def test_preprocess_keeps_a_good_output_when_no_row_survives(tmp_path, synthetic):
    """Item 11: the 'no rows' check runs before the atomic commit, not after it."""
    path, _ = synthetic
    output = tmp_path / "pre.h5"
    preprocess(PreprocessConfig(inputs=[str(path)], output=str(output)), progress=False, log=lambda *_: None)
    good = output.read_bytes()
    F = random_initial_states(np.random.default_rng(1), 5)
    F_bad = F.copy()
    F_bad[:, 0, 0] = np.nan  # every row dropped by the NaN filter
    write_emu(tmp_path / "nan.h5", F_bad, F)
    with pytest.raises(DataFileError, match="no rows survived the filters"):
        preprocess(PreprocessConfig(inputs=[str(tmp_path / "nan.h5")], output=str(output)), progress=False,
                   log=lambda *_: None)
    assert output.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.h5", "pre.h5"]  # no temporary left


@pytest.mark.parametrize("damage", ["short_final", "group_initial", "group_final", "group_growth"])
def test_malformed_emu_files_give_one_clear_error(tmp_path, damage, capsys):
    """Item 18: F4_final shorter than F4_initial (the message read a closed file) and groups in
    place of datasets: a DataFileError naming the problem, and exit 2 from `dodo preprocess`."""
    F = random_initial_states(np.random.default_rng(2), 4)
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as out:
        out.create_group("F4_initial(1|ccm)") if damage == "group_initial" else out.create_dataset(
            "F4_initial(1|ccm)", data=to_emu_layout(F))
        if damage == "group_final":
            out.create_group("F4_final(1|ccm)")
        else:
            out["F4_final(1|ccm)"] = to_emu_layout(F[:2] if damage == "short_final" else F)
        if damage == "group_growth":
            out.create_group("growthRate(1|s)")
    if damage == "group_growth":  # an optional dataset that is a group is ignored, not fatal
        assert len(next(iter_emu_chunks(path))) == 4
        return
    expected = {"short_final": "differs from", "group_initial": "not a dataset", "group_final": "not a dataset"}[damage]
    with pytest.raises(DataFileError, match=expected):
        next(iter_emu_chunks(path))
    from dodo.cli import main

    (tmp_path / "pre.yaml").write_text(f"inputs: [{path}]\noutput: {tmp_path / 'pre.h5'}\n")
    assert main(["preprocess", "--config", str(tmp_path / "pre.yaml"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err and not (tmp_path / "pre.h5").exists()


FULL_DISK_SCRIPT = """
import errno, sys
import dodo._atomic as atomic
from dodo.cli import main

budget = [int(sys.argv[2])]
original = atomic.WriteErrorLatch._pwrite


def pwrite(self, view, offset):  # the disk fills up after `budget` bytes
    if budget[0] < len(view):
        raise OSError(errno.ENOSPC, "No space left on device")
    budget[0] -= len(view)
    return original(self, view, offset)


atomic.WriteErrorLatch._pwrite = pwrite
# --overwrite: the earlier output of the test is not HDF5, which preprocess keeps without it
sys.exit(main(["preprocess", "--config", sys.argv[1], "-q", "--overwrite"]))
"""


@pytest.mark.parametrize("budget", [0, 5000, 200_000])
def test_a_full_disk_gives_one_clean_error_and_keeps_the_old_output(tmp_path, synthetic, budget):
    """Item 8: a write that fails for lack of space (simulated: ENOSPC after `budget` bytes) stops
    `dodo preprocess` with a one-line error, exit 2, no crash (HDF5 segfaulted closing datasets
    after a failed write), the earlier output intact and no temporary left."""
    import subprocess
    import sys

    path, _ = synthetic
    output = tmp_path / "out" / "pre.h5"
    output.parent.mkdir()
    output.write_bytes(b"an earlier good output")
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{path}]\noutput: {output}\nchunk_size: 50\n")
    run = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(config), str(budget)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "No space left on device" in run.stderr, run.stderr
    assert output.read_bytes() == b"an earlier good output"
    assert [p.name for p in output.parent.iterdir()] == ["pre.h5"]


def test_a_full_tmpfs_gives_one_clean_error(tmp_path, synthetic):
    """Item 8 on a real full filesystem (a 64 KiB tmpfs; needs root to mount it)."""
    import os
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path, _ = synthetic
        config = tmp_path / "pre.yaml"
        config.write_text(f"inputs: [{path}]\noutput: {mount / 'pre.h5'}\n")
        for _ in range(2):
            run = subprocess.run([sys.executable, "-m", "dodo", "preprocess", "--config", str(config), "-q"],
                                 capture_output=True, text=True, timeout=300)
            assert run.returncode == 2, run.stderr
            assert run.stderr.strip().count("\n") == 0 and "No space left on device" in run.stderr, run.stderr
            assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
