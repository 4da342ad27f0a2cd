"""Solver probe, round five (outside probe of `dodo simulate` and `python -m dodo.qke.validate`, as an
astrophysicist making their own ground truth uses them; /work/notes/solver_probe_round5_section.md).
Each test of a fix failed against the code before it (its docstring says what that code did); the
others pin laws that held. Tiny runs: 16 cells x 24 directions, one to three states."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_probe_solver_round3 import _run_cli

TINY = ["--ncell", "16", "--nphi", "8", "-q"]


def _database(path) -> tuple[dict, dict]:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


def _emu_to_dodo(f4: np.ndarray) -> np.ndarray:
    """Emu's F4 [n, 4 (x, y, z, t), 2, 3] -> [n, 6, 4 (n, Fx, Fy, Fz)]."""
    return np.transpose(f4, (0, 2, 3, 1))[..., [3, 0, 1, 2]].reshape(len(f4), 6, 4)


@pytest.mark.parametrize("family", ["three_flavour", "emu", None])
def test_source_heavy_equal_says_whether_mu_equals_tau_in_the_states(tmp_path, family):
    """`source.heavy_equal` of a random campaign was `not --three-flavour`: `--family three_flavour`,
    whose every state has mu != tau, recorded "heavy_equal": true (and so did `--family merger`, about
    half of whose states have mu != tau). Now it is read off the states themselves: true exactly when
    nu_mu = nu_tau and nubar_mu = nubar_tau in every state."""
    out = tmp_path / "labels.h5"
    chosen = ["--family", family] if family else ["--three-flavour"]
    assert _run_cli(["simulate", str(out), "--random", "3", "--seed", "3", *chosen, *TINY, "--linear-only"]) == 0
    rows, attrs = _database(out)
    states = _emu_to_dodo(rows["F4_initial(1|ccm)"])
    mu_equals_tau = bool(np.array_equal(states[:, [1, 4]], states[:, [2, 5]]))
    assert mu_equals_tau == (family == "emu")
    assert json.loads(attrs["source"])["heavy_equal"] is mu_equals_tau, attrs["source"]


def _history(t: np.ndarray, wiggle: bool) -> np.ndarray:
    """Grows 1e-6 -> 1 by t = 10, oscillates about 1 to 20, falls to 1e-5 by 25 (with a small local maximum, 3e-4,
    at t = 24 when ``wiggle``), grows again to 0.5 by 32 and oscillates about it."""
    m = np.empty_like(t)
    for i, x in enumerate(t):
        if x <= 10:
            m[i] = 1e-6 * 1e6 ** (x / 10)
        elif x <= 20:
            m[i] = 1.0 + 0.1 * np.sin(3.0 * x)
        elif x <= 25:
            m[i] = 1e-5 ** ((x - 20) / 5)
        elif x <= 32:
            m[i] = 1e-5 * (0.5 / 1e-5) ** ((x - 25) / 7)
        else:
            m[i] = 0.5 + 0.05 * np.sin(3.0 * x)
    if wiggle:
        m[np.argmin(np.abs(t - 24.0))] *= 3.0
    return m


def test_saturation_index_keeps_the_last_three_decade_pair_of_maxima_as_documented():
    """docs/qke.md and asymptotic.py's docstrings said t_sat is at the *first* >= 3-decade jump between local
    maxima; the code (Rhea's loop) keeps the *last* qualifying pair of consecutive maxima, a fall counting as
    a rise. The documents now say so; this pins the documented rule on a history that saturates, falls,
    and grows again: with a local maximum in the fall t_sat moves to the second peak, without it stays at
    the first."""
    from dodo.qke.asymptotic import saturation_index

    t = np.linspace(0.0, 40.0, 401)
    smooth, wiggled = _history(t, False), _history(t, True)
    first = t[saturation_index(smooth)]
    assert 10.0 <= first <= 20.0, first
    assert t[saturation_index(wiggled)] >= 32.0, t[saturation_index(wiggled)]


def test_rows_obey_the_laws_and_mu_tau_inputs_give_mu_tau_scatter_only(tmp_path):
    """Law (held): every row of a run is realizable (n >= 0, |F| <= n per species), keeps the flavour-summed
    four-flux (nu and nubar) and each flavour's lepton number to 1e-12 N_tot. A mu = tau input does not give
    mu = tau rows (independent e-mu and e-tau seeds, docs/qke.md "Initial state"); the mu - tau difference is
    scatter below 0.05 N_tot, and the mu + tau sum keeps its lepton number as every flavour does."""
    out = tmp_path / "emu.h5"
    assert _run_cli(["simulate", str(out), "--random", "3", "--seed", "3", "--family", "emu", "--batch-size", "1",
                     *TINY]) == 0
    rows, _ = _database(out)
    initial, final = _emu_to_dodo(rows["F4_initial(1|ccm)"]), _emu_to_dodo(rows["F4_final(1|ccm)"])
    assert len(final) >= 1
    ntot = initial[:, :, 0].sum(axis=1)[:, None]
    assert np.array_equal(initial[:, [1, 4]], initial[:, [2, 5]])  # the inputs are mu = tau
    assert (final[..., 0] >= 0).all()
    assert (np.linalg.norm(final[..., 1:], axis=-1) <= final[..., 0] * (1 + 1e-12)).all()
    for nu, nubar in ((slice(0, 3), slice(3, 6)),):
        for part in (nu, nubar):
            assert np.abs(final[:, part].sum(axis=1) - initial[:, part].sum(axis=1)).max() / ntot.max() < 1e-12
    lepton = lambda s: s[:, 0:3, 0] - s[:, 3:6, 0]  # noqa: E731 - per flavour e, mu, tau
    assert (np.abs(lepton(final) - lepton(initial)) / ntot).max() < 1e-12
    split = np.abs(final[:, [1, 4]] - final[:, [2, 5]]).max() / ntot.max()
    assert 0 < split < 0.05, split


def test_a_database_given_back_as_input_reproduces_its_rows_bit_for_bit(tmp_path):
    """Law (held): a `dodo simulate` database is an Emu-layout input: rerun with its own settings, its
    rotation_R (the boxes' axes) taken from the file, the rows come back bit for bit."""
    first, again = tmp_path / "first.h5", tmp_path / "again.h5"
    assert _run_cli(["simulate", str(first), "--random", "2", "--seed", "3", "--family", "three_flavour",
                     "--batch-size", "2", *TINY]) == 0
    assert _run_cli(["simulate", str(again), "--input", str(first), "--seed", "3", "--batch-size", "2", *TINY]) == 0
    a, _ = _database(first)
    b, attrs = _database(again)
    assert json.loads(attrs["settings"])["rotation_given"] is True
    assert list(a["input_index"]) == list(b["input_index"]) == [0, 1]  # both ran, so the batches are the same
    for name in ("F4_initial(1|ccm)", "rotation_R", "box_length_cm", "tend(s)", "F4_final(1|ccm)",
                 "F4_final_stddev(1|ccm)", "growthRate(1|s)", "tsat(s)"):
        assert np.array_equal(a[name], b[name]), name


def test_validate_emu32_leaves_a_reference_state_without_a_growth_rate_out_of_the_ratio(tmp_path):
    """`python -m dodo.qke.validate emu32 --reference MINE.h5` with a reference whose growthRate(1|s) is 0 for
    a state (an Emu run one's own reduction found no growth in): the ratio to Emu divided by it, warned
    "divide by zero encountered in divide" and reported the ratio's mean and max as null (inf) with no word
    of why. Now such states are left out of the ratio and a note names them."""
    import warnings

    h5py = pytest.importorskip("h5py")
    from dodo.qke.validate import validate_emu32

    reference = tmp_path / "mine.h5"
    assert _run_cli(["simulate", str(reference), "--random", "1", "--seed", "3", "--family", "three_flavour",
                     *TINY]) == 0
    with h5py.File(reference, "a") as f:
        f["walltime(s)"] = np.array([100.0])
        f["growthRate(1|s)"][...] = np.array([0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        report = validate_emu32(str(reference), str(tmp_path / "v.h5"), batch_size=1, flavour_cfl=1.0, seed=0,
                                write_progress=False, print_summary=False)
    assert report["nvalid"] == 1, report
    assert report["growth_rate_ratio_to_emu"] == {"mean": None, "min": None, "max": None}, report
    assert "growthRate(1|s) is not a positive number there (state 0: 0)" in report["note"], report
    assert report["linear_growth_ratio_to_file"] is not None and np.isfinite(report["linear_growth_ratio_to_file"])


def test_swapping_neutrinos_and_antineutrinos_swaps_the_outcome(tmp_path):
    """Law (held): the equations are symmetric under rho <-> conj(rhobar) (H -> -conj(H)), so a state with
    its neutrinos and antineutrinos swapped has the same linear box growth rate (exactly, up to rounding)
    and, run with its own seeds, the swapped asymptotic state within the run-to-run scatter."""
    yaml = pytest.importorskip("yaml")
    state = np.array([[1.0e33, 0, 0, 0.5e33], [0.3e33, 0, 0, 0.1e33], [0.2e33, 0, 0, 0.05e33],
                      [1.2e33, 0, 0, -0.3e33], [0.3e33, 0, 0, 0.1e33], [0.25e33, 0, 0, 0.1e33]])
    swapped = state[[3, 4, 5, 0, 1, 2]]
    source = tmp_path / "states.yaml"
    source.write_text(yaml.safe_dump({"states": [state.tolist(), swapped.tolist()]}))
    out = tmp_path / "out.h5"
    assert _run_cli(["simulate", str(out), "--input", str(source), "--batch-size", "1", *TINY]) == 0
    rows, _ = _database(out)
    assert list(rows["input_index"]) == [0, 1]
    rate = rows["linear_growthRate_box(1|s)"]
    assert abs(rate[0] / rate[1] - 1) < 1e-9, rate
    final = _emu_to_dodo(rows["F4_final(1|ccm)"])
    ntot = state[:, 0].sum()
    assert np.abs(final[0] - final[1][[3, 4, 5, 0, 1, 2]]).max() / ntot < 0.03
    moved = np.abs(final[0] - state).max() / ntot
    assert moved > 0.1, moved  # the state did change flavour: the comparison above is not trivial


EDGE = np.array([[1.0e33, 0, 0, 0.5e33], [0.3e33, 0, 0, 0.1e33], [0, 0, 0, 0],
                 [1.2e33, 0, 0, -0.3e33], [0.3e33, 0, 0, 0.1e33], [0, 0, 0, 0]])


def test_a_coarse_run_slowed_by_the_particle_mesh_coupling_says_so(tmp_path):
    """`dodo simulate OUT --ncell 4` (or 8) with the default --hamiltonian-filter emu: the coupling at the fastest
    k is sinc(9/ncell)^6 of the continuum's (0.0017 at 4 cells, 0.27 at 8), while the end time is 80 growth
    times of the continuum rate, so runs were dropped as "not saturated early enough: t_end = 1.06 t_sat < 3.0"
    or "no exponential growth found" (4 cells; at 8, two states at t_end = 2.84 and 2.89 t_sat) alone, as if
    the states were at fault. Now the reason ends with the factor and the cure (more cells or
    --hamiltonian-filter none, which runs the same state to a valid row); at 64 cells (0.98) no words are added."""
    from dodo.qke.campaign import coarse_coupling_hint
    from dodo.qke.solver import SolverConfig

    yaml = pytest.importorskip("yaml")
    source = tmp_path / "states.yaml"
    source.write_text(yaml.safe_dump({"states": [EDGE.tolist()]}))
    out = tmp_path / "out.h5"
    assert _run_cli(["simulate", str(out), "--input", str(source), "--ncell", "4", "--nphi", "8", "-q"]) == 2
    assert not out.exists()
    assert _run_cli(["simulate", str(out), "--input", str(source), "--ncell", "4", "--nphi", "8", "-q",
                     "--hamiltonian-filter", "none"]) == 0
    rows, _ = _database(out)
    assert len(rows["growthRate(1|s)"]) == 1
    hint = coarse_coupling_hint(SolverConfig(ncell=8), None)
    assert "0.27 of the continuum's" in hint and "--hamiltonian-filter none" in hint, hint
    assert coarse_coupling_hint(SolverConfig(ncell=64), None) == ""
    assert coarse_coupling_hint(SolverConfig(ncell=8, hamiltonian_filter="none"), None) == ""


def test_the_coarse_coupling_words_reach_the_drop_reason(tmp_path, capsys):
    """The words of the test above, in the run's own drop line (stderr) and the error naming the states."""
    yaml = pytest.importorskip("yaml")
    source = tmp_path / "states.yaml"
    source.write_text(yaml.safe_dump({"states": [EDGE.tolist()]}))
    capsys.readouterr()
    assert _run_cli(["simulate", str(tmp_path / "out.h5"), "--input", str(source), "--ncell", "4", "--nphi", "8"]) == 2
    err = capsys.readouterr().err
    assert "dropped state 0: not saturated early enough" in err, err
    assert "at 4 cells the particle-mesh coupling (--hamiltonian-filter emu) is 0.0017" in err, err


def test_the_coarse_coupling_words_are_not_added_to_a_given_end_time(tmp_path, capsys):
    """With --use-input-end-time the end time is the file's, not 80 growth times of the continuum rate: the
    words of the tests above (which say the continuum rate set it) are not added there."""
    yaml = pytest.importorskip("yaml")
    source = tmp_path / "states.yaml"
    source.write_text(yaml.safe_dump({"states": [EDGE.tolist()]}))
    made = tmp_path / "made.h5"
    assert _run_cli(["simulate", str(made), "--input", str(source), *TINY]) == 0
    capsys.readouterr()
    assert _run_cli(["simulate", str(tmp_path / "out.h5"), "--input", str(made), "--use-input-end-time",
                     "--ncell", "4", "--nphi", "8"]) == 2
    err = capsys.readouterr().err
    assert "dropped state 0:" in err and "particle-mesh" not in err, err
