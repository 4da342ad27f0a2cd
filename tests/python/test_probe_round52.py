"""Outside probe, Python round fifty-two: `dodo plot` of metrics files whose numbers lie near the
float range (section 86's "not fixed")."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cli_helpers import run
from test_probe_round51 import _metrics  # the metrics file `dodo plot` reads, with its losses

BIG = 1.7976931348623157e308  # DBL_MAX


def _quiet_plot(capsys, argv):
    """`dodo ARGV` with every warning an error: matplotlib's overflow warnings were printed to the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return run(capsys, argv)


@pytest.mark.parametrize("losses", [[1e308, 1e-308, 5e-324],  # section 86's reproducer
                                    [BIG], [1e250, 1e-300], [1e300, 1.0], [1.0, 5e-324],
                                    [-BIG, -1e307, 0.0], [1e308, -1e308]])
@pytest.mark.parametrize("command", ["curve", "metrics"])
def test_plot_of_losses_near_the_float_range_warns_nothing(tmp_path, capsys, losses, command):
    pytest.importorskip("matplotlib")
    metrics = _metrics(tmp_path / "metrics.json", losses, losses[-1:], best=losses[0], test=losses[-1],
                       box3d=losses[0], model=losses[-1])
    code, out, err = _quiet_plot(capsys, ["plot", command, str(metrics), "-o", str(tmp_path / "c.png")])
    assert code == 0 and "Warning" not in err and "Traceback" not in err, err
    assert (tmp_path / "c.png").stat().st_size > 0 and "wrote" in out


@pytest.mark.parametrize("rows", [[[1e308, 1, 1, 1, 1, 1], [0.1] * 6],  # "overflow encountered in multiply"
                                  [[1.7e308, 1, 1, 1, 1, 1], [-1] * 6],  # "error: arange: cannot compute length"
                                  [[BIG] * 6, [-BIG] * 6]])
def test_plot_curve_parity_of_values_near_the_float_range_warns_nothing(tmp_path, capsys, rows):
    pytest.importorskip("matplotlib")
    parity = {"n_true": rows, "n_box3d": rows[::-1], "n_model": rows}
    metrics = _metrics(tmp_path / "metrics.json", [1.0], [1.0], parity=parity)
    code, out, err = _quiet_plot(capsys, ["plot", "curve", str(metrics), "-o", str(tmp_path / "c.png")])
    assert code == 0 and "error" not in err and "Warning" not in err and "Traceback" not in err, err
    assert (tmp_path / "c_parity.png").stat().st_size > 0 and "wrote" in out


def test_plot_of_ordinary_losses_keeps_matplotlib_limits_and_a_log_axis():
    """The far-range limits are taken only beyond 1e100: a run's ordinary curve keeps matplotlib's own
    autoscaled log axis (a margin outside the values), and far values get whole-decade limits."""
    pytest.importorskip("matplotlib")
    from dodo.training import plots

    plt = plots._pyplot()
    limits = []
    for values in ([1.0, 0.5, 0.01], [1e308, 1e-308]):
        fig, axis = plt.subplots()
        axis.plot(range(len(values)), values)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plots._log_scale(axis, values)
            fig.canvas.draw()
        limits.append((axis.get_yscale(), *axis.get_ylim()))
        plt.close(fig)
    (scale, low, high), far = limits
    assert scale == "log" and low < 0.01 and 1.0 < high < 10  # matplotlib's margin, as before
    assert far == ("log", 1e-308, 1e308)


@pytest.mark.parametrize("run_name", ["a$\\frac$b",  # "dodo plot: error: \frac ^ ParseSyntaxException: ...", exit 2
                                      "r$_{$s",
                                      "lr$1$"])  # drawn as mathtext: "lr1" in italics, the dollars gone
def test_plot_metrics_labels_run_directories_as_plain_text(tmp_path, capsys, monkeypatch, run_name):
    pytest.importorskip("matplotlib")
    from dodo.training import plots

    (tmp_path / run_name / "runs").mkdir(parents=True)  # a run's metrics file: RUN/runs/metrics_<stamp>.json
    metrics = _metrics(tmp_path / run_name / "runs" / "metrics_7.json", [1.0], [1.0])
    drawn = []
    save = plots.save_figure

    def keep_labels(fig, output):
        drawn.extend((label.get_text(), label.get_parse_math()) for axis in fig.axes
                     for label in axis.get_xticklabels())
        return save(fig, output)

    monkeypatch.setattr(plots, "save_figure", keep_labels)
    code, out, err = _quiet_plot(capsys, ["plot", "metrics", str(metrics), "-o", str(tmp_path / "m.png")])
    assert code == 0 and "error" not in err and "Traceback" not in err, err
    assert drawn == [(f"{run_name}/7", False)] * 2  # the name as it is, on both panels, not parsed as TeX


def test_plot_reads_a_metrics_file_saved_with_a_byte_order_mark(tmp_path, capsys):
    """An editor that writes a UTF-8 BOM: refused as "not JSON: Unexpected UTF-8 BOM" before."""
    pytest.importorskip("matplotlib")
    metrics = _metrics(tmp_path / "metrics.json", [1.0, 0.5], [0.7])
    metrics.write_bytes(b"\xef\xbb\xbf" + metrics.read_bytes())
    for command in ("curve", "metrics"):
        code, out, err = _quiet_plot(capsys, ["plot", command, str(metrics), "-o", str(tmp_path / f"{command}.png")])
        assert code == 0 and err == "" and (tmp_path / f"{command}.png").stat().st_size > 0, err


def test_plot_of_json_nested_too_deeply_names_the_file(tmp_path, capsys):
    """'[[[[...' (a damaged file): "dodo plot: error: maximum recursion depth exceeded while decoding a
    JSON array from a unicode string" before, naming no file."""
    pytest.importorskip("matplotlib")
    deep = tmp_path / "metrics_deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    code, out, err = run(capsys, ["plot", "curve", str(deep), "-o", str(tmp_path / "c.png")])
    assert code == 2 and not (tmp_path / "c.png").exists()
    assert err.strip().splitlines() == [f"dodo plot: error: {deep}: not a Dodo metrics JSON (JSON nested too deeply "
                                        "to read)"], err


@pytest.mark.parametrize("digits", [309, 401, 5001])  # 10**308 (drawn), beyond float (a gap, as 1e400), past int's limit
@pytest.mark.parametrize("command", ["curve", "metrics"])
def test_plot_of_a_loss_written_as_a_huge_integer(tmp_path, capsys, command, digits):
    """"dodo plot: error: int too large to convert to float" before, and for 5,001 digits "Exceeds the limit
    (4300 digits) for integer string conversion": neither named the file."""
    pytest.importorskip("matplotlib")
    huge = "1" + "0" * (digits - 1)
    text = _metrics(tmp_path / "metrics.json", [0.5, 7.0], [0.25], best=7.0, box3d=7.0).read_text()
    metrics = tmp_path / "metrics.json"
    metrics.write_text(text.replace("7.0", huge))
    code, out, err = _quiet_plot(capsys, ["plot", command, str(metrics), "-o", str(tmp_path / "c.png")])
    assert code == 0 and err == "" and (tmp_path / "c.png").stat().st_size > 0, err


def test_plot_curve_parity_of_huge_integers(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = [[10 ** 400] * 6, [1] * 6]
    metrics = _metrics(tmp_path / "metrics.json", [1.0], [1.0], parity={"n_true": rows, "n_box3d": rows, "n_model": rows})
    code, out, err = _quiet_plot(capsys, ["plot", "curve", str(metrics), "-o", str(tmp_path / "c.png")])
    assert code == 0 and err == "" and (tmp_path / "c_parity.png").stat().st_size > 0, err


def _one_line_naming(call, *words):
    with pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "Exceeds the limit" not in message and "too large to convert" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_numbers_past_the_int_text_limit_are_named_in_their_messages():
    """Ints (and Fractions) of more than 4,300 digits: the messages themselves raised "Exceeds the limit (4300
    digits) for integer string conversion" (str() of the number), and max_flux_factor=10**400 "int too large
    to convert to float", none naming the argument or the cell."""
    import fractions

    import dodo

    huge = 10 ** 5000
    F = np.zeros((6, 4))
    message = _one_line_naming(lambda: dodo.box3d([[huge, 0, 0, 0]] * 6), "F_init", "cell ()", "(5001 digits)",
                               "beyond the range of float64")
    assert "100000000000... (5001 digits)" in message
    _one_line_naming(lambda: dodo.closure([[-huge, 0, 0, 0]] * 6, None, model="box3d"), "F_init",
                     "-100000000000... (5001 digits)")
    _one_line_naming(lambda: dodo.box3d(F, [huge, 0, 0, 0]), "u has dtype object", "(5001 digits)")
    _one_line_naming(lambda: dodo.invariants([[fractions.Fraction(huge, 3), 0, 0, 0]] * 6), "F_init",
                     "333333333333... (5000 digits before the point)")
    _one_line_naming(lambda: dodo.box3d(F, threads=huge), "threads must be an integer in [0, 1024]", "(5001 digits)")
    _one_line_naming(lambda: dodo.Closure("box3d", threads=huge), "threads", "(5001 digits)")
    _one_line_naming(lambda: dodo.box3d(F, lebedev_order=huge), "lebedev_order", "is not available", "(5001 digits)")
    _one_line_naming(lambda: dodo.Closure("box3d", lebedev_order=huge), "lebedev_order", "is not available", "(5001 digits)")
    _one_line_naming(lambda: dodo.Closure("box3d", lebedev_order=-huge), "lebedev_order must be", "-100000000000... (5001")
    _one_line_naming(lambda: dodo.Closure("box3d", chunk_size=huge), "chunk_size must be an integer in", "(5001 digits)")
    _one_line_naming(lambda: dodo.ClosureResult.empty((huge,)), "batch_shape (100000000000... (5001 digits),) is too large")
    _one_line_naming(lambda: dodo.Box3DResult.empty((2, -huge)), "batch_shape must hold sizes >= 0", "(5001 digits)")
    _one_line_naming(lambda: dodo.ClosureResult.empty(10 ** 20), "batch_shape 100000000000000000000 is too large")
    _one_line_naming(lambda: dodo.crossing_features(F, lebedev_order=huge), "lebedev_order", "(5001 digits)")
    _one_line_naming(lambda: dodo.box3d(F, threads=fractions.Fraction(huge, 3)), "threads must be an integer",
                     "(5000 digits before the point)")
    for big in (10 ** 400, huge):
        _one_line_naming(lambda: dodo.box3d(F, max_flux_factor=big), "max_flux_factor must be a real number")


def test_numbers_short_enough_are_shown_as_before():
    """A guard: the messages of ordinary mistakes keep their whole values."""
    import dodo

    F = np.zeros((6, 4))
    assert _one_line_naming(lambda: dodo.box3d(F, threads=2 ** 31), "threads").endswith("got 2147483648")
    assert "lebedev_order 18 is not available" in _one_line_naming(lambda: dodo.box3d(F, lebedev_order=18))
    assert _one_line_naming(lambda: dodo.box3d(F, threads=list(range(12))), "threads").endswith(
        "got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]")
    assert "100000000000... (401 characters)" in _one_line_naming(lambda: dodo.box3d([[10 ** 400, 0, 0, 0]] * 6))


def test_status_and_species_index_name_a_number_past_the_int_text_limit():
    """describe_status(10**5000) and species_index(10**5000, 0): "Exceeds the limit (4300 digits) ..." before."""
    import dodo

    _one_line_naming(lambda: dodo.describe_status(10 ** 5000), "a cell status is a uint32", "(5001 digits)")
    _one_line_naming(lambda: dodo.conventions.species_index(10 ** 5000, 0), "antineutrino must be an integer",
                     "(5001 digits)")
    assert _one_line_naming(lambda: dodo.describe_status(-1)).endswith("got -1")  # ordinary values as before
    assert _one_line_naming(lambda: dodo.conventions.species_index(0, 3)).endswith("got 3")
