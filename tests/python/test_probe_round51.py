"""Outside probe, Python round fifty-one: `dodo plot` on metrics files with numbers no log axis can
draw, and `dodo score`'s header on many data files."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

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
