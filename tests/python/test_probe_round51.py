"""Outside probe, Python round fifty-one: `dodo plot` on metrics files with numbers no log axis can
draw, and `dodo score`'s header on many data files."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import dodo
from cli_helpers import run

EMU = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
EMU_KEYS = ("F4_initial(1|ccm)", "F4_final(1|ccm)", "growthRate(1|s)")


def _metrics(path: Path, train, val, best=0.5, test=0.6, box3d=0.01, model=0.005, parity=None) -> Path:
    data = {"history": {"train": [{"total": t} for t in train], "val": [{"total": v} for v in val]},
            "metric_table": {"box3d": {"mean_abs_dn_over_ntot_all": box3d},
                             "model": {"mean_abs_dn_over_ntot_all": model}},
            "best_val_loss": best, "test_loss": {"total": test}}
    if parity is not None:
        data["parity"] = parity
    path.write_text(json.dumps(data))  # json.dumps writes Infinity and NaN, which json.loads reads back
    return path


def _quiet_plot(capsys, argv):
    """`dodo ARGV` with every warning an error: matplotlib's warnings were printed to the user before."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return run(capsys, argv)


@pytest.mark.parametrize("train, val", [([-1.0, 0.0], []),  # no positive loss: "cannot be log-scaled"
                                        ([0.0, 0.0], [0.0]),
                                        ([float("-inf"), 0.0], [float("inf")])])
def test_plot_curve_of_losses_no_log_axis_draws_warns_nothing(tmp_path, capsys, train, val):
    pytest.importorskip("matplotlib")
    metrics = _metrics(tmp_path / "metrics.json", train, val)
    code, out, err = _quiet_plot(capsys, ["plot", "curve", str(metrics), "-o", str(tmp_path / "c.png")])
    assert code == 0 and "Warning" not in err and "Traceback" not in err, err
    assert (tmp_path / "c.png").stat().st_size > 0 and "wrote" in out


@pytest.mark.parametrize("numbers", [dict(best=-1.0, test=0.0, box3d=-3.0, model=None),
                                     dict(best=float("inf"), test=float("nan"), box3d=0.0, model=0.0)])
def test_plot_metrics_of_numbers_no_log_axis_draws_warns_nothing(tmp_path, capsys, numbers):
    pytest.importorskip("matplotlib")
    metrics = _metrics(tmp_path / "metrics.json", [1.0], [1.0], **numbers)
    code, out, err = _quiet_plot(capsys, ["plot", "metrics", str(metrics), "-o", str(tmp_path / "m.png")])
    assert code == 0 and "Warning" not in err and "Traceback" not in err, err
    assert (tmp_path / "m.png").stat().st_size > 0


def test_plot_keeps_a_log_axis_for_positive_losses(tmp_path):
    """The fix draws a linear axis only where no value is positive: a run's ordinary curve stays on a log axis."""
    pytest.importorskip("matplotlib")
    from dodo.training import plots

    figures = []
    plt = plots._pyplot()
    for values in ([1.0, 0.5, float("inf")], [0.0, -1.0]):
        fig, axis = plt.subplots()
        plots._log_scale(axis, [plots._number(v) for v in values])
        figures.append(axis.get_yscale())
        plt.close(fig)
    assert figures == ["log", "linear"]


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_score_header_on_many_files_names_a_few_and_counts_the_rest(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    paths = []
    with h5py.File(EMU, "r") as source:
        for i in range(8):  # 8 files of 4 different states each
            path = tmp_path / f"part_{i:02d}_of_a_long_campaign_name.h5"
            with h5py.File(path, "w") as target:
                for key in EMU_KEYS:
                    target[key] = source[key][4 * i:4 * i + 4]
            paths.append(path)
    code, out, err = run(capsys, ["score", "box3d", *map(str, paths), "--bootstrap", "100"])
    assert code == 0, err
    header = out.splitlines()[0]
    assert "part_00_of" in header and "part_02_of" in header and "5 more files (8 in all)" in header, header
    assert "part_07_of" not in header and "(32 states;" in header, header


def test_score_header_names_every_file_of_a_few(tmp_path):
    from dodo.score import _files_label

    assert _files_label(["a.h5", "b.h5"]) == "a.h5 + b.h5"
    assert _files_label(["a.h5", "b.h5", "c.h5", "d.h5"]) == "a.h5 + b.h5 + c.h5 + d.h5"
    assert _files_label([f"{i}.h5" for i in range(300)], ", ") == "0.h5, 1.h5, 2.h5, 297 more files (300 in all)"


# -- units outside the array: an xarray DataArray's attrs, a DataArray of a pint Quantity, a list of quantities --

class _DataArray:
    """What dodo reads of an xarray DataArray: data, attrs, __array__, and attrs read as attributes."""

    def __init__(self, data, attrs=None):
        self.data, self.attrs = data, dict(attrs or {})

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.data, dtype=dtype)

    def __getattr__(self, key):  # xarray reads attrs as attributes: da.units is attrs['units']
        if key in self.__dict__.get("attrs", {}):
            return self.attrs[key]
        raise AttributeError(key)


_DataArray.__module__, _DataArray.__qualname__ = "xarray.core.dataarray", "DataArray"


class _Quantity:
    """A pint Quantity's surface: magnitude, units, m_as (cm^-3 and m^-3 known), __array__ (the bare numbers)."""

    def __init__(self, magnitude, units):
        self.magnitude, self.units = np.asarray(magnitude, dtype=float), units

    def m_as(self, target):
        factor = {("meter ** -3", "cm**-3"): 1e-6, ("centimeter ** -3", "cm**-3"): 1.0}.get((self.units, target))
        if factor is None:
            raise ValueError("DimensionalityError")
        return self.magnitude * factor

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.magnitude, dtype=dtype)


_Quantity.__module__, _Quantity.__qualname__ = "pint", "Quantity"


def _state():
    F = np.zeros((6, 4))
    F[:, 0] = [1.0, 1.2, 0.5, 0.6, 0.4, 0.4]
    F[:, 3] = [0.2, -0.3, 0.1, -0.2, 0.05, 0.1]
    return F * 1e32, np.array([1.0, 0.0, 0.0, 0.0])


needs_runtime_51 = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


@needs_runtime_51
@pytest.mark.parametrize("make, words", [
    (lambda F, u: (_DataArray(F, {"units": "m^-3"}), u), ["F_init has attrs['units'] = 'm^-3'", "cm^-3"]),
    (lambda F, u: (F, _DataArray(u, {"units": "km/s"})), ["u has attrs['units'] = 'km/s'", "plain numbers"]),
    (lambda F, u: (_DataArray(_Quantity(F, "meter ** -3")), u), ["quantity in meter ** -3", 'm_as("cm**-3")']),
    (lambda F, u: ([_Quantity(F, "meter ** -3")], [u]), ["F_init[0] is a quantity in meter ** -3", "1e+06"]),
])
def test_units_outside_the_array_are_read_not_dropped(make, words):
    F, u = _state()
    F_init, velocity = make(F, u)
    with pytest.raises(ValueError) as refusal:
        dodo.box3d(F_init, velocity)
    message = str(refusal.value)
    assert "\n" not in message and all(word in message for word in words), message


@needs_runtime_51
@pytest.mark.parametrize("make", [
    lambda F, u: (_DataArray(F, {"units": "cm^-3"}), _DataArray(u, {"units": "1"})),
    lambda F, u: (_DataArray(F, {"units": "1 / centimeter ** 3"}), _DataArray(u)),
    lambda F, u: (_DataArray(_Quantity(F, "centimeter ** -3")), u),
    lambda F, u: ([_Quantity(F, "centimeter ** -3"), F], [u, u]),
])
def test_units_outside_the_array_in_cm3_compute_as_the_bare_numbers(make):
    F, u = _state()
    F_init, velocity = make(F, u)
    expected = dodo.box3d(F, u)
    result = dodo.box3d(F_init, velocity)
    got = np.asarray(result.F_box).reshape(-1, 6, 4)
    assert all(np.array_equal(cell, np.asarray(expected.F_box)) for cell in got)
