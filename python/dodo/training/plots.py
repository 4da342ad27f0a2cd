"""`dodo plot metrics|curve`: matplotlib PNGs from metrics_<timestamp>.json files."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from dodo.conventions import SPECIES

from .._output_guard import PLOT_CREATOR


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_metrics(path: str | Path, numbers: bool = True) -> dict:
    """A metrics JSON of `dodo train`, with the history `plot curve` draws and (``numbers``) the
    losses and scores `plot metrics` draws."""
    path = Path(path)
    if not path.is_file():
        if path.exists():  # a directory, FIFO or device: say so ("not found" of a path that is there misled)
            from .._atomic import check_input_file

            check_input_file(path, "a metrics JSON file (dodo train writes them)")
        raise FileNotFoundError(f"metrics file not found: {path}")
    try:
        # UTF-8 whatever the locale, a byte-order mark allowed: a metrics file saved again by an editor
        # that writes one was refused as "not JSON: Unexpected UTF-8 BOM" (outside probe, Python round
        # fifty-two).
        data = json.loads(path.read_text(encoding="utf-8-sig"), parse_int=_json_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:  # an HDF5 file, a YAML config, a cut JSON
        raise ValueError(f"{path}: not a Dodo metrics JSON ({_other_kind(path) or f'not JSON: {error}'})") from None
    except RecursionError:  # '[[[[...': "maximum recursion depth exceeded ...", naming no file (round fifty-two)
        raise ValueError(f"{path}: not a Dodo metrics JSON (JSON nested too deeply to read)") from None
    if not isinstance(data, dict) or "history" not in data or "metric_table" not in data:
        report = data.get("dodo_report") if isinstance(data, dict) else None
        if isinstance(data, list) and data and all(isinstance(row, dict) and "run" in row and "status" in row
                                                   for row in data):
            # A study's summary.json said only "no history / metric_table" (outside probe, Python round
            # fifty-seven): name it, and the files to give instead.
            shown = next((row["metrics"] for row in data if isinstance(row.get("metrics"), str)), None)
            raise ValueError(f"{path}: not a Dodo metrics JSON (it is the summary of a dodo study; give its runs' "
                             "metrics files, run_XXX/results/metrics_*.json"
                             + (f", e.g. {shown}" if shown else "") + ")")
        raise ValueError(f"{path}: not a Dodo metrics JSON (" + (
            f"it is a report of {report}; " if isinstance(report, str) else "") + "no history / metric_table)")
    # The entries the plots read, checked here: an edited or older file ended in a KeyError or
    # TypeError traceback ('best_val_loss', "string indices must be integers").
    for keys in _PLOTTED_NUMBERS if numbers else ():
        value = data
        for key in keys:
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: not a Dodo metrics JSON of dodo train ({'.'.join(keys)} is "
                             f"{'missing' if value is _MISSING else 'not a number'})")
    history = data["history"]
    for split in ("train", "val"):
        rows = history.get(split) if isinstance(history, dict) else None
        if not isinstance(rows, list) or not all(isinstance(row, dict) and _is_number(row.get("total", _MISSING))
                                                 for row in rows):
            raise ValueError(f"{path}: not a Dodo metrics JSON of dodo train (history.{split} must be a list of "
                             "epochs, each with a 'total' loss)")
    parity = data.get("parity")
    if parity:  # checked before anything is drawn: `plot curve` writes the curve, then the parity plot
        if not (isinstance(parity, dict) and all(key in parity for key in ("n_true", "n_box3d", "n_model"))):
            raise ValueError(f"{path}: not a Dodo metrics JSON of dodo train (parity must hold n_true, n_box3d, "
                             "n_model)")
        shapes = {}
        for key in ("n_true", "n_box3d", "n_model"):
            try:
                values = np.array(parity[key], dtype=float)
            except (TypeError, ValueError):
                values = np.empty(0)
            if parity["n_true"] and (values.ndim != 2 or values.shape[1] != len(SPECIES)):
                raise ValueError(f"{path}: not a Dodo metrics JSON of dodo train (parity.{key} must be "
                                 f"[cells, {len(SPECIES)} species] numbers)")
            shapes[key] = values.shape
        if parity["n_true"] and len(set(shapes.values())) != 1:
            # Each cell is one point of each plot: matplotlib's "x and y must be the same size" came
            # after the curve was written (outside probe, round 38).
            rows = ", ".join(str(shape[0]) for shape in shapes.values())
            raise ValueError(f"{path}: not a Dodo metrics JSON of dodo train (parity.n_true, n_box3d and n_model "
                             f"must hold the same cells; got {rows} rows)")
    return data


def _other_kind(path) -> str:
    """"it is a dodo synth database" (or another of Dodo's binary files) for a file that is no JSON; '' for
    any other. `dodo plot curve cells.h5` said "not JSON: 'utf-8' codec can't decode byte 0x89 in position
    0: invalid start byte" of a dodo apply cell file (outside probe, Python round fifty-four)."""
    from .._output_guard import file_kind

    try:
        kind = file_kind(path)
    except (OSError, ValueError):
        return ""
    return "" if kind.startswith(("a file of another kind", "a file that cannot be read")) else f"it is {kind}"


def _json_int(text: str):
    """A JSON integer as an int where float holds it, else as the float its digits round to (inf
    beyond the range, as json reads 1e400): a loss of 10**400 ended in "dodo plot: error: int too
    large to convert to float", one of 5,001 digits in "Exceeds the limit (4300 digits) for integer
    string conversion", naming no file (outside probe, Python round fifty-two)."""
    return int(text) if len(text.lstrip("-")) <= 308 else float(text)


_MISSING = object()
#: Numbers of a metrics JSON that `dodo plot metrics` draws (null: a non-finite value, drawn as a gap).
_PLOTTED_NUMBERS = (("best_val_loss",), ("test_loss", "total"), ("metric_table", "box3d", "mean_abs_dn_over_ntot_all"),
                    ("metric_table", "model", "mean_abs_dn_over_ntot_all"))


def _is_number(value) -> bool:
    return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value) -> float:
    # Infinity and NaN (JSON extensions json.loads reads) are gaps too, as null is: an infinite loss in
    # `plot metrics`' bars made matplotlib print "RuntimeWarning: invalid value encountered in dot"
    # (outside probe, Python round fifty-one).
    number = float("nan") if value is None else float(value)
    return number if np.isfinite(number) else float("nan")


def _log_scale(axis, *series) -> None:
    """A log y axis where a drawn value is positive, else a linear one: with none (losses or |dn| of
    0 or below in an edited file) matplotlib printed "UserWarning: Data has no positive values, and
    therefore cannot be log-scaled" and the command still exited 0 (outside probe, Python round fifty-one)."""
    values = np.array([value for values in series for value in values], dtype=float)
    values = values[np.isfinite(values)]
    log = bool(np.any(values > 0))
    drawn = np.abs(values[values > 0] if log else values)
    far = drawn.size and (drawn.max() > _FAR or log and drawn.min() < 1 / _FAR)
    ticks = _far_limits(axis, drawn, log) if far else None  # before set_yscale: its autoscale overflows there
    axis.set_yscale("log" if log else "linear")
    if ticks is not None:  # after it: set_yscale puts back the scale's own locators
        from matplotlib.ticker import FixedLocator, NullLocator

        axis.yaxis.set_major_locator(FixedLocator(ticks))
        axis.yaxis.set_minor_locator(NullLocator())


#: Beyond this (or below its inverse on a log axis) matplotlib's autoscale margin and tick locators
#: overflow from about 1e250; no loss of `dodo train` comes near it.
_FAR = 1e100


def _far_limits(axis, drawn, log: bool) -> np.ndarray:
    """The limits set, and the ticks returned, without the margin and the locators that overflow near
    the float range: losses of 1e308 (an edited file) made matplotlib print "RuntimeWarning: overflow
    encountered in exp" (or "in power", "in multiply") and the command still exited 0 (outside probe,
    Python round fifty-two; section 86's "not fixed")."""
    axis.set_autoscaley_on(False)  # else set_ylim first runs the pending (linear) autoscale, which overflows
    if log:  # whole decades around the values, within the float range; about 8 ticks
        low, high = int(np.floor(np.log10(drawn.min()))), int(np.ceil(np.log10(drawn.max())))
        low, high = max(low, -323), min(max(high, low + 1), 308)  # a single value 1e200: no equal limits
        low = min(low, high - 1)
        axis.set_ylim(min(10.0 ** low, float(drawn.min())), max(10.0 ** high, float(drawn.max())))
        stride = max(1, -(-(high - low) // 8))
        return 10.0 ** np.arange(-(-low // stride) * stride, high + 1, stride)  # at multiples of the stride
    return _linear_limits(axis.yaxis, [-float(drawn.max()), 0.0])  # no positive value: all in [-max, 0]


def _linear_limits(axis, values) -> np.ndarray:
    """The limits of a linear ``axis`` (an XAxis or YAxis) set over ``values``, and 5 ticks returned.
    matplotlib's tolerances overflow where an axis spans more than half the float range, so the
    limits stay within +-DBL_MAX / 4: a value beyond runs off the axis."""
    axis.axes.set_autoscalex_on(False) if axis.axis_name == "x" else axis.axes.set_autoscaley_on(False)
    bound = np.finfo(float).max / 4
    low, high = (float(np.clip(value, -bound, bound)) for value in (min(values), max(values)))
    if low == high:
        low, high = (low - 1.0, high + 1.0) if abs(low) < 1 else (low - abs(low) / 2, high + abs(high) / 2)
    (axis.axes.set_xlim if axis.axis_name == "x" else axis.axes.set_ylim)(low, high)
    return np.linspace(low, high, 5)


def _far_parity(axis, x, y) -> None:
    """The parity plot's limits and ticks set where a value is beyond ``_FAR`` (an edited file; the values
    are fractions n / N_tot): n_true 1e308 made matplotlib print "RuntimeWarning: overflow encountered in
    multiply", and 1.7e308 beside -1 ended in "dodo plot: error: arange: cannot compute length" (outside
    probe, Python round fifty-two)."""
    for values, side in ((x, axis.xaxis), (y, axis.yaxis)):
        far_linear_limits(side, values)


def far_linear_limits(side, values) -> None:
    """The limits and 5 ticks of a linear axis ``side`` (an XAxis or YAxis) set over ``values`` where
    one is beyond ``_FAR``; else nothing (matplotlib's own autoscale). Call it before drawing: the
    autoscale overflows there. Also `dodo learning-curve --plot` (training/ensemble_train.py)."""
    from matplotlib.ticker import FixedLocator

    values = np.asarray(values, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if values.size and np.abs(values).max() > _FAR:
        side.set_major_locator(FixedLocator(_linear_limits(side, [values.min(), values.max()])))


#: The most runs `plot metrics` draws, each a labelled group of bars: the figure grew 1.2 inches a run,
#: and 300 runs made a PNG 43,920 pixels wide (600: 87,120), which image viewers refuse or shrink to a
#: line, and a PDF wider than a PDF page may be (outside probe, Python round fifty-four). Beyond it, the
#: runs of lowest best validation loss are drawn (in the order given) and the title says how many of how
#: many, so that the figure is at most 1.2 * 30 + 6 = 42 inches (5,040 pixels) wide.
MAX_PLOTTED_RUNS = 30


def _runs_drawn(runs: list) -> list[int]:
    """The indices of the runs `plot metrics` draws: all of them up to MAX_PLOTTED_RUNS, else the
    MAX_PLOTTED_RUNS of lowest best validation loss (a run without a finite one last; ties: the order
    given), kept in the order given."""
    if len(runs) <= MAX_PLOTTED_RUNS:
        return list(range(len(runs)))
    best = np.array([_number(r["best_val_loss"]) for r in runs])
    order = np.argsort(np.where(np.isnan(best), np.inf, best), kind="stable")
    return sorted(int(i) for i in order[:MAX_PLOTTED_RUNS])


#: The longest run directory (and timestamp) in the label of a run under its bars: a run directory of 60
#: characters (a tag naming the run's settings) squeezed both panels to a sliver beside its label, and
#: from about 80 matplotlib printed "UserWarning: Tight layout not applied" (outside probe, Python round
#: fifty-four).
MAX_LABEL_PART = 16


def _shortened(text: str) -> str:
    """``text`` of at most MAX_LABEL_PART characters: a longer one's middle left out ("..."), its start and
    its end (where names of runs differ: a seed, a number) kept."""
    if len(text) <= MAX_LABEL_PART:
        return text
    head = (MAX_LABEL_PART - 3) // 2
    return text[:head] + "..." + text[-(MAX_LABEL_PART - 3 - head):]


def _run_labels(metrics_paths: list, drawn: list[int]) -> list[str]:
    """RUN_DIR/TIMESTAMP of each run drawn, each part shortened (_shortened); a label that two runs drawn
    share (run_000 of two studies, or two long names alike at both ends) gets the run's place among the
    files given, "[k]". The run directory of the absolute path: `results/metrics_X.json` given from inside
    the run's directory was labelled "/X" (the name of "." is empty; outside probe, Python round 54)."""
    paths = [Path(os.path.abspath(metrics_paths[i])) for i in drawn]
    labels = [_shortened(path.parent.parent.name) + "/" + _shortened(path.stem.replace("metrics_", ""))
              for path in paths]
    shared = {label for label in labels if labels.count(label) > 1}
    return [f"{label} [{i + 1}]" if label in shared else label for label, i in zip(labels, drawn)]


def plot_metrics(metrics_paths: list, output: str | Path) -> Path:
    """Best validation and test loss across runs, and model vs Box3D mean |dn|/N_tot: of the
    MAX_PLOTTED_RUNS runs of lowest best validation loss where more are given (the title says so)."""
    plt = _pyplot()
    every = [load_metrics(p) for p in metrics_paths]
    drawn = _runs_drawn(every)
    runs = [every[i] for i in drawn]
    labels = _run_labels(metrics_paths, drawn)
    x = np.arange(len(runs))
    fig, (ax_loss, ax_dn) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(runs) + 6), 4.5))
    best_val, test = [_number(r["best_val_loss"]) for r in runs], [_number(r["test_loss"]["total"]) for r in runs]
    if len(drawn) < len(every):
        lossless = int(np.sum(np.isnan(best_val)))  # drawn only where fewer runs than the cap have a loss
        fig.suptitle(f"{len(drawn)} of {len(every)} runs: the {len(drawn)} of lowest best validation loss"
                     + (f" ({lossless} of them without one)" if lossless else "")
                     + f", in the order given ({len(every) - len(drawn)} left out)", fontsize=9)
    ax_loss.bar(x - 0.2, best_val, 0.4, label="best val")
    ax_loss.bar(x + 0.2, test, 0.4, label="test")
    _log_scale(ax_loss, best_val, test)
    ax_loss.set_ylabel("loss")
    box3d, model = ([_number(r["metric_table"][key]["mean_abs_dn_over_ntot_all"]) for r in runs]
                    for key in ("box3d", "model"))
    ax_dn.bar(x - 0.2, box3d, 0.4, label="Box3D")
    ax_dn.bar(x + 0.2, model, 0.4, label="model")
    _log_scale(ax_dn, box3d, model)
    ax_dn.set_ylabel("mean |dn| / N_tot (test)")
    for axis in (ax_loss, ax_dn):
        # Plain text: a run directory named 'a$\frac$b' was parsed as mathtext ("dodo plot: error: \frac ^
        # ParseSyntaxException: ..."), and 'lr$1$' drawn as 'lr1' (outside probe, Python round fifty-two).
        axis.set_xticks(x, labels, rotation=30, ha="right", fontsize=7, parse_math=False)
        axis.legend()
    fig.tight_layout()
    return save_figure(fig, output)


def plot_curve(metrics_path: str | Path, output: str | Path) -> list[Path]:
    """Train/val loss per epoch (output) and a per-species parity plot (<output stem>_parity, in
    the output's format)."""
    plt = _pyplot()
    run = load_metrics(metrics_path, numbers=False)  # the history alone (and the parity data if there)
    fig, axis = plt.subplots(figsize=(6, 4.5))
    epochs = np.arange(1, len(run["history"]["train"]) + 1)
    train, val = ([_number(h["total"]) for h in run["history"][split]] for split in ("train", "val"))
    axis.plot(epochs, train, label="train")
    axis.plot(np.arange(1, len(val) + 1), val, label="val")
    _log_scale(axis, train, val)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.legend()
    fig.tight_layout()
    figures = [(fig, Path(output))]

    parity = run.get("parity")
    if parity and parity["n_true"]:
        # As load_metrics read them: null (a non-finite value in strict JSON) is NaN, a gap. Read
        # without dtype, a null made an object array and min() a TypeError traceback, after the
        # curve was written (outside probe, round 38).
        n_true, n_box, n_model = (np.array(parity[k], dtype=float) for k in ("n_true", "n_box3d", "n_model"))
        fig, axes = plt.subplots(2, 3, figsize=(11, 7))
        for i, (axis, name) in enumerate(zip(axes.ravel(), SPECIES)):
            _far_parity(axis, n_true[:, i], np.concatenate([n_box[:, i], n_model[:, i]]))  # before any autoscale
            axis.scatter(n_true[:, i], n_box[:, i], s=3, alpha=0.5, label="Box3D")
            axis.scatter(n_true[:, i], n_model[:, i], s=3, alpha=0.5, label="model")
            finite = n_true[:, i][np.isfinite(n_true[:, i])]
            if finite.size:  # the diagonal over the true values there are
                axis.plot([finite.min(), finite.max()], [finite.min(), finite.max()], "k-", lw=0.8)
            axis.set_title(name)
            axis.set_xlabel("true n / N_tot")
            axis.set_ylabel("predicted n / N_tot")
        axes[0, 0].legend()
        fig.tight_layout()
        figures.append((fig, parity_path(output)))
    # The two files together: written one after the other, a parity plot that could not be written
    # (a full disk) left the new curve beside the earlier parity plot (data-loss probe, round three).
    return save_figures(figures)


def parity_path(output) -> Path:
    """The parity plot that `plot curve` writes beside ``output``, in the same format (curve.pdf:
    curve_parity.pdf; it was always a PNG); no extension: PNG, as for ``output``."""
    output = Path(output)
    return output.with_name(output.stem + "_parity" + (output.suffix or ".png"))


def plot_format(output) -> str:
    """The format a plot file is written in: its own extension's (a .pdf used to receive PNG
    bytes), PNG without one; ValueError for any other, so that a command can check its plot's name
    before its work (`dodo learning-curve --plot`)."""
    output = Path(output)
    form = output.suffix.lower().lstrip(".") or "png"
    if form not in ("png", "pdf", "svg"):
        raise ValueError(f"{output}: plots are written as PNG, PDF or SVG; name the file .png, .pdf or .svg")
    return form


def save_figures(figures) -> list[Path]:
    """Each ``(fig, output)`` written as :func:`save_figure` does, all or none: every file is written
    to its temporary first, and the files are renamed into place only when all were written. The
    figures are closed."""
    from .._atomic import atomic_path

    plt = _pyplot()
    try:
        forms = [plot_format(output) for _, output in figures]
        with contextlib.ExitStack() as stack:
            for (fig, output), form in zip(figures, forms):
                tmp = stack.enter_context(atomic_path(output))
                fig.savefig(tmp, dpi=120, format=form, metadata={"Creator": PLOT_CREATOR})  # the guard's mark
    finally:
        for fig, _ in figures:
            plt.close(fig)
    return [Path(output) for _, output in figures]


def save_figure(fig, output) -> Path:
    """``fig`` written atomically to ``output`` in :func:`plot_format`'s format, then closed."""
    return save_figures([(fig, Path(output))])[0]
