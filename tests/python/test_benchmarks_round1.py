"""Outside probe of the benchmarks, round one (issue 13: speed is measured by benchmarks, not by timed
tests). These tests run benchmarks/bench_speed.py and its pieces on tiny sizes and check the output's
structure, the one-line errors, the cleanup after an interrupt and the callgrind count's
reproducibility; nothing here depends on the machine's speed (timeouts are hang guards only)."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_speed.py"
X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_speed_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(*arguments, env=None, prelude="", timeout=600):
    """The script in a fresh interpreter; `prelude` runs first (to take a dependency away)."""
    code = (f"import runpy, sys\n{prelude}\nsys.argv = [{str(BENCH)!r}] + {list(arguments)!r}\n"
            f"sys.exit(runpy.run_path({str(BENCH)!r}, run_name='__main__'))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def one_line_error(result, status):
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.stderr
    return lines[-1]


def test_per_cell_arithmetic_and_positive_counts():
    bench = load_bench()
    assert bench.per_cell(4_000_000, 2, 2000) == 1000.0
    assert bench.per_cell(3_000, 1, 3) == 1000.0
    assert bench.positive_int("7") == 7
    for bad in ("0", "-3", "x", "1.5"):
        with pytest.raises(Exception):
            bench.positive_int(bad)


def test_worker_environment_holds_blas_to_one_thread(tmp_path):
    """The naive row's count was noisy, even negative (1.93e9 for one run, 3.04e9 for three): the
    worker's main thread spin-waited in OpenBLAS's exec_blas for its helper thread, for as long as
    the loaded machine took to run it under valgrind's serialised scheduler."""
    bench = load_bench()
    environment = bench.worker_environment(str(tmp_path))
    assert environment["OPENBLAS_NUM_THREADS"] == "1"
    assert environment["OMP_NUM_THREADS"] == "1"
    assert environment["PYTHONHASHSEED"] == "0"
    assert environment["TMPDIR"] == str(tmp_path)  # valgrind's own files go where the run's files go


@pytest.mark.skipif(not X86_64, reason="callgrind's client requests are issued as x86-64 code")
def test_client_request_is_a_no_op_outside_valgrind():
    bench = load_bench()
    assert bench.client_request(bench.RUNNING_ON_VALGRIND) == 0
    assert bench.client_request(bench.CALLGRIND_TOGGLE_COLLECT) == 0


@pytest.mark.parametrize("arguments, option", [
    (["--cells", "0"], "--cells"), (["--repeats", "0"], "--repeats"), (["--threads", "1", "0"], "--threads"),
    (["--oracle-cells", "-5"], "--oracle-cells"), (["--callgrind-cells", "0", "--callgrind"], "--callgrind-cells"),
    (["--cells", "many"], "--cells")])
def test_bad_option_values_are_one_line_errors(arguments, option):
    """Before: --repeats 0 ended in statistics.StatisticsError, --cells 0 in a ValueError of
    np.concatenate, --oracle-cells 0 and --callgrind-cells 0 in ZeroDivisionError (tracebacks, after
    minutes of measuring), --threads 0 printed rows labelled 0 threads."""
    line = one_line_error(run_bench(*arguments, timeout=120), 2)
    assert option in line and ("at least 1" in line or "not an integer" in line), line


def test_callgrind_without_valgrind_is_one_line(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_bench("--cells", "10", "--oracle-cells", "10", "--repeats", "1", "--threads", "1", "--callgrind",
                       env=dict(os.environ, PATH=str(empty)), timeout=300)
    line = one_line_error(result, 1)
    assert "valgrind" in line, line
    assert "| oracle |" not in result.stdout  # refused before anything is measured


def test_missing_onnxruntime_is_one_line():
    result = run_bench("--cells", "10", "--oracle-cells", "10", "--repeats", "1", "--threads", "1",
                       prelude="sys.modules['onnxruntime'] = None", timeout=300)
    line = one_line_error(result, 1)
    assert "onnxruntime" in line, line


def test_missing_default_model_is_one_line(tmp_path):
    missing = tmp_path / "no_such_model.onnx"
    prelude = ("import pathlib, dodo.models\n"
               f"dodo.models.default_model_path = lambda: pathlib.Path({str(missing)!r})")
    result = run_bench("--cells", "10", "--oracle-cells", "10", "--repeats", "1", "--threads", "1",
                       prelude=prelude, timeout=300)
    line = one_line_error(result, 1)
    assert "no default model" in line and str(missing) in line, line


ROW = re.compile(r"^\| (\w+) \| (\d+) \| ([\d,]+) \| ([\d,]+) \(([\d,]+)-([\d,]+)\) \| ([\d,]+) \| ([\d,]+)x \| (.*) \| (.*) \|$")


def test_table_has_every_row_and_the_anchor_ratios():
    """The rows the docstring lists, one table, each ratio against rows of the same run."""
    result = run_bench("--cells", "300", "--oracle-cells", "40", "--repeats", "2", "--threads", "1", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# dodo ") and "300 moving cells" in lines[0] and "median of 2" in lines[0]
    assert lines[1] == ("| pipeline | threads | cells | cells/s (wall, min-max) | cells/s per core (CPU time) | "
                        "vs oracle | vs box3d | instructions/cell |")
    rows = {}
    for line in lines[3:]:
        match = ROW.match(line)
        assert match, line
        rows[match.group(1)] = match
    assert sorted(rows) == sorted(["oracle", "box3d", "network", "native", "closure", "stable80", "naive"])
    assert rows["oracle"].group(3) == "40" and rows["oracle"].group(8) == "1"  # the anchor against itself
    assert all(rows[name].group(3) == "300" for name in rows if name != "oracle")
    assert rows["box3d"].group(9) == "1.00"
    assert re.fullmatch(r"\d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\)", rows["closure"].group(9)), rows["closure"].group(9)
    assert re.fullmatch(r"\d+\.\d\d \(\d+\.\dx the all-crossing closure, \d+\.\d-\d+\.\d\)",
                        rows["stable80"].group(9)), rows["stable80"].group(9)
    assert all(rows[name].group(10) == "" for name in rows)  # no instruction counts without --callgrind
    for name, row in rows.items():  # wall rate: median inside its min-max
        low, median, high = (int(row.group(i).replace(",", "")) for i in (5, 4, 6))
        assert low <= median <= high, (name, row.group(0))


def _own_files(folder: pathlib.Path) -> list:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.name != ".ses")


@pytest.mark.skipif(shutil.which("valgrind") is None or not X86_64, reason="needs valgrind on x86-64")
def test_ctrl_c_during_callgrind_leaves_nothing_and_says_so(tmp_path):
    """Before: a Ctrl-C while a callgrind worker ran ended in a KeyboardInterrupt traceback, and the
    killed valgrind left its three vgdb FIFOs (vgdb-pipe-*) in /tmp."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    code = (f"import runpy, sys, signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
            f"sys.argv = [{str(BENCH)!r}, '--cells', '50', '--oracle-cells', '20', '--repeats', '1', '--threads', '1', "
            f"'--callgrind', '--callgrind-cells', '20']\nsys.exit(runpy.run_path({str(BENCH)!r}, run_name='__main__'))\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TMPDIR=str(temporary)), start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # hang guard only: wait for the first worker's folder
        while time.monotonic() < deadline and not any(temporary.glob("bench_speed_callgrind_*")):
            if process.poll() is not None:
                break
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        time.sleep(2.0)  # valgrind started inside it
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, (process.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("bench_speed.py: interrupted"), stderr
    assert stdout.startswith("# dodo ")  # the header was printed before the interrupt
    assert _own_files(temporary) == []


@pytest.mark.skipif(shutil.which("valgrind") is None or not X86_64, reason="needs valgrind on x86-64")
def test_naive_row_callgrind_count_is_per_cell_and_reproducible():
    """Callgrind counts only the counted calls (toggled by client requests), so one call and two give
    the same count per cell, twice over, and it is positive (the old whole-process difference of
    three runs and one moved by 65 million instructions between identical runs, 16,000 a cell)."""
    bench = load_bench()
    one = bench.callgrind_instructions("naive", 600, runs=1)
    two = bench.callgrind_instructions("naive", 600, runs=2)
    assert one > 1000 and two > 1000, (one, two)
    assert abs(one - two) <= 0.01 * two, (one, two)


@pytest.mark.parametrize("script, arguments, option", [
    ("bench_box3d.py", ["--repeats", "0"], "--repeats"), ("bench_box3d.py", ["--oracle-cells", "0"], "--oracle-cells"),
    ("bench_models.py", ["default", "--rounds", "0"], "--rounds"), ("bench_closure.py", ["--sizes", "0"], "--sizes"),
    ("bench_qke.py", ["--resolutions", "64"], "--resolutions"), ("bench_qke.py", ["--steps", "0"], "--steps"),
    ("bench_training.py", ["--cells", "-1"], "--cells"), ("campaign_plan.py", ["--ranks", "0"], "--ranks"),
    ("bench_scaling.py", ["--repeats", "0"], "--repeats"), ("native_precision.py", ["0"], "cells")])
def test_other_benchmarks_refuse_bad_counts_in_one_line(script, arguments, option):
    """Before: StatisticsError (bench_box3d --repeats 0, bench_models --rounds 0), ZeroDivisionError
    (bench_box3d --oracle-cells 0), a table of zeros (bench_box3d --cells 0), ValueError tracebacks."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *arguments], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    line = one_line_error(result, 2)
    assert option in line, line


def test_bench_models_names_a_missing_package(tmp_path):
    missing = tmp_path / "absent.onnx"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "default", str(missing),
                             "--cells", "10", "--rounds", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    line = one_line_error(result, 2)
    assert "no model package" in line and str(missing) in line, line


def test_bench_box3d_oracle_runs_the_cells_it_divides_by():
    """The anchor's rate is --oracle-cells / time: the oracle must get that many states, also when
    --cells is smaller (before: states[:oracle_cells] of --cells states, the anchor's rate overstated)."""
    bench = str(ROOT / "benchmarks" / "bench_box3d.py")
    code = (f"import runpy, sys\nsys.path.insert(0, {str(ROOT / 'tests' / 'python')!r})\nimport box3d_oracle\n"
            "original = box3d_oracle.box3d\n"
            "def counting(states, *args, **kwargs):\n"
            "    print('oracle states', len(states), file=sys.stderr)\n"
            "    return original(states, *args, **kwargs)\n"
            "box3d_oracle.box3d = counting\n"
            f"sys.argv = [{bench!r}, '--cells', '30', '--oracle-cells', '70', '--repeats', '1']\n"
            f"sys.exit(runpy.run_path({bench!r}, run_name='__main__'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.findall(r"oracle states (\d+)", result.stderr) == ["70"], result.stderr[-3000:]
    table = result.stdout.splitlines()
    assert any(line.startswith("NumPy oracle (anchor)") and line.split()[3] == "70" for line in table), table
    assert sum(line.startswith("C++ core") and line.split()[-5] == "30" for line in table) >= 1, table


def test_bench_closure_runs_the_shipped_model():
    """--model with the shipped default (52 features: invariants27+box7+eln18) fed the network row
    27-column invariants: onnxruntime's INVALID_ARGUMENT traceback. Now the model's own feature set."""
    import dodo

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_closure.py"), "--sizes", "200",
                             "--threads", "1", "--repeats", "1", "--model", str(dodo.models.default_model_path())],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 2e+02 | 1 |")]
    assert len(rows) == 1 and rows[0].count("|") == 10, result.stdout


def test_bench_qke_ctrl_c_stops_its_worker_processes_in_one_line(tmp_path):
    """Before: a Ctrl-C during the two-process rows printed three KeyboardInterrupt tracebacks (this
    process and both spawned workers). Now the workers ignore SIGINT and are stopped by the script,
    which says so in one line (exit status 130); no process of the group is left."""
    output = tmp_path / "out.txt"
    with open(output, "w") as stdout:
        code = ("import signal, runpy, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
                f"sys.argv = [{str(ROOT / 'benchmarks' / 'bench_qke.py')!r}, '--resolutions', '32x8', '--steps', '200', "
                "'--repeats', '50', '--processes', '2', '--threads', '1']\n"
                f"sys.exit(runpy.run_path(sys.argv[0], run_name='__main__'))\n")
        process = subprocess.Popen([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, cwd=ROOT)
        try:
            deadline = time.monotonic() + 300  # hang guard: wait for the table's header
            while time.monotonic() < deadline and "backend" not in output.read_text() and process.poll() is None:
                time.sleep(0.2)
            assert process.poll() is None, output.read_text()
            time.sleep(1.5)  # the two workers spawned
            os.killpg(process.pid, signal.SIGINT)
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert process.returncode == 130, (process.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines() == ["bench_qke.py: interrupted; no temporary files left behind"], stderr
    deadline = time.monotonic() + 30  # hang guard: multiprocessing's resource tracker exits on its own
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    with pytest.raises(ProcessLookupError):  # no worker left running in the session's group
        os.killpg(process.pid, 0)


def test_a_failed_callgrind_worker_is_one_line_with_its_message(monkeypatch):
    """Before: subprocess.CalledProcessError with the worker's stderr sent to /dev/null (the reason
    lost), and the table (printed at the end) lost with it."""
    bench = load_bench()
    seen = {}

    def failing_run(command, **kwargs):
        seen["command"], seen["env"] = command, kwargs["env"]
        return subprocess.CompletedProcess(command, 1, stdout=None,
                                           stderr="==1== Callgrind\nTraceback (most recent call last):\nValueError: boom\n")

    monkeypatch.setattr(bench.subprocess, "run", failing_run)
    with pytest.raises(bench.BenchError, match=r"^the callgrind run of the closure row failed \(exit status 1\): "
                                                r"ValueError: boom$"):
        bench.callgrind_instructions("closure", 10)
    assert "--collect-atstart=no" in seen["command"] and "--vgdb=no" in seen["command"]
    assert seen["env"]["OPENBLAS_NUM_THREADS"] == "1"


def test_bench_training_refuses_an_absent_device_before_its_work():
    """Before: --device cuda on a machine without CUDA wrote and preprocessed the synthetic database
    first, then ended in a RuntimeError traceback from train(). Now one argparse line, nothing made."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_training.py"), "--cells", "2000",
                             "--device", "cuda"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    line = one_line_error(result, 2)
    assert "CUDA is not available" in line and "preprocess:" not in result.stdout, line


def test_threads_2_alone_still_has_the_network_rows():
    """Before: the network rows ran only in the one-thread pass, so `--threads 2` alone printed no
    network or native row (the oracle was kept for that case). Now once, labelled 1 thread."""
    result = run_bench("--cells", "200", "--oracle-cells", "20", "--repeats", "1", "--threads", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [ROW.match(line) for line in result.stdout.splitlines()[3:]]
    assert all(rows), result.stdout
    labels = [(row.group(1), row.group(2)) for row in rows]
    assert ("network", "1") in labels and ("native", "1") in labels, labels
    assert ("closure", "2") in labels and ("box3d", "2") in labels, labels
    assert [name for name, _ in labels].count("network") == 1, labels
