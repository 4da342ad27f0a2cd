"""Open items of earlier probe rounds, taken in round openitems8 (2026-12-07): a Python thread of a small stack
(Python round fifty-eight, C round fifty), `total_density` of float16 densities and `check_input_file`'s unquoted
names (Python round sixty-four), `dodo simulate` in a directory made read-only after a checkpoint and the
campaign's chunk check, which compared no option of DODO_CAMPAIGN_ARGS but --linear-only (data-loss round
fifteen)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from another_user import AS_A_USER, needs_setpriv, skip_without_setpriv

CHILD_TIMEOUT_S = 600

# --- a Python thread of a small stack ----------------------------------------------------------------------------

#: Every compiled call of the package on the main thread and on a thread of KIB KiB of stack: the same bits,
#: and errors raised inside the compiled work (a Box3D setting the runtime refuses, a negative time step of the
#: QKE kernel) the same exceptions with the same words.
SMALL_STACK_CALLS = textwrap.dedent("""
    import sys, threading
    import numpy as np
    import dodo
    from dodo import _core

    rng = np.random.default_rng(3)
    n = 2000
    F = np.zeros((n, 6, 4)); F[:, :, 0] = rng.uniform(0.5, 1.5, (n, 6))
    F[:, :, 1:] = rng.uniform(-0.3, 0.3, (n, 6, 3)) * F[:, :, :1]
    v = rng.uniform(-0.3, 0.3, (n, 3))
    u = np.zeros((n, 4)); u[:, 0] = 1 / np.sqrt(1 - (v ** 2).sum(1)); u[:, 1:] = v * u[:, :1]

    def calls():
        got = {}
        result = dodo.box3d(F, u, threads=2)
        got["box3d"], got["box3d status"] = result.F_box, result.status
        got["invariants"] = dodo.invariants(F)
        got["crossing_features"] = np.concatenate([np.ravel(np.asarray(part)) for part in
                                                  np.atleast_1d(dodo.crossing_features(F))])
        got["comoving_density"] = dodo.comoving_density(F, u)
        got["boost_to_rest"] = dodo.boost_to_rest(F, u[:, None, :])
        for evaluator in ("auto", "onnxruntime"):
            for threads in (1, 2):
                closure = dodo.Closure(threads=threads, evaluator=evaluator)
                applied = closure.apply(F, u)
                got[f"closure {evaluator} {threads}"] = applied.F_pred
                got[f"growth {evaluator} {threads}"] = applied.growth_rate
                got[f"self_test {evaluator} {threads}"] = np.float64(closure.self_test())
        got["dodo.closure"] = dodo.closure(F, u)
        try:
            dodo.Closure(threads=1, lebedev_order=4)
        except Exception as error:
            got["refused setting"] = f"{type(error).__name__}: {error}"
        kernel = _core.QkeKernel(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]), 8, np.array([1.0]), np.ones(8), None,
                                 1.0, 1.0)
        state = kernel.get_state()
        kernel.set_state((rng.normal(size=state.shape) + 1j * rng.normal(size=state.shape)) * 1e-3)
        for _ in range(3):
            got["qke moments"] = kernel.step(np.array([1e-2]), threads=2)
        got["qke state"] = kernel.get_state()
        try:
            kernel.step(np.array([-1.0]))
        except Exception as error:
            got["refused step"] = f"{type(error).__name__}: {error}"
        return got

    rng_state = rng.bit_generator.state
    on_main = calls()
    rng.bit_generator.state = rng_state
    threading.stack_size(int(sys.argv[1]) * 1024)
    on_thread = {}
    def work():
        try:
            on_thread.update(calls())
        except BaseException as error:
            on_thread["raised"] = repr(error)
    thread = threading.Thread(target=work); thread.start(); thread.join()
    assert "raised" not in on_thread, on_thread["raised"]
    assert sorted(on_main) == sorted(on_thread), (sorted(on_main), sorted(on_thread))
    for key, value in on_main.items():
        if isinstance(value, str):
            assert value == on_thread[key], (key, value, on_thread[key])
        else:
            assert np.array_equal(np.atleast_1d(value).view(np.uint8), np.atleast_1d(on_thread[key]).view(np.uint8)), key
    print("same:", on_main["refused setting"], "|", on_main["refused step"])
""")


@pytest.mark.parametrize("kib", [32, 64, 96])
def test_a_python_thread_of_a_small_stack_computes_the_main_threads_bits(kib):
    """Before: a Python thread of 64 KiB (`threading.stack_size(64 * 1024)`) died of SIGSEGV in `dodo.box3d`, one
    of 96 KiB creating a `Closure` (rc -11): the bindings ran the kernels on the calling thread's stack, where the
    C API runs them on a stack of 512 KiB mapped for a thread that has little left (C round fifty). Now the
    bindings' compiled work does the same (gil.hpp, with_room): Box3D, the closure with both evaluators and 1-2
    threads, its self-test, invariants, crossing features, the boosts and the QKE kernel give the main thread's
    bits at 32 KiB (threading's least) to 96 KiB; an error raised inside that work (caught on that stack, raised
    again on the thread's own) is the same exception with the same words."""
    from dodo import runtime_available

    if not runtime_available():
        pytest.skip("needs the closure runtime")
    run = subprocess.run([sys.executable, "-c", SMALL_STACK_CALLS, str(kib)], capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    assert run.stdout.startswith("same: ValueError: DODO_ERROR_INVALID_ARGUMENT: Box3D settings: lebedev_order 4 is "
                                 "not available") and "| ValueError: time steps must be positive and finite" in run.stdout
    assert run.stderr == "", run.stderr[-3000:]


def test_the_stacks_of_small_stack_threads_are_unmapped_when_they_end():
    """Guard: each small-stack thread's mapped stack (512 KiB and a guard page) goes with the thread: 40 threads
    of 64 KiB, three box3d calls each, leave the process's mappings as they were (give or take allocator noise),
    not 80 mappings more."""
    script = textwrap.dedent("""
        import threading
        import numpy as np
        import dodo
        F = np.zeros((100, 6, 4)); F[:, 0] = [1, 0, 0, 0.5]; F[:, 3] = [1, 0, 0, -0.5]
        def mappings():
            with open("/proc/self/maps") as maps:
                return sum(1 for _ in maps)
        threading.stack_size(64 * 1024)
        def one_thread():
            thread = threading.Thread(target=lambda: [dodo.box3d(F) for _ in range(3)]); thread.start(); thread.join()
        one_thread()
        before = mappings()
        for _ in range(40):
            one_thread()
        print(before, mappings())
    """)
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    before, after = map(int, run.stdout.split())
    assert after - before < 40, (before, after)


def test_a_small_stack_thread_where_no_stack_can_be_mapped_gets_a_memory_error():
    """Where the 512 KiB stack cannot be mapped (an address-space limit just above what the process holds), the
    call is a MemoryError saying what to do, not a crash on the short stack."""
    script = textwrap.dedent("""
        import resource, threading
        import numpy as np
        import dodo
        F = np.zeros((100, 6, 4)); F[:, 0] = [1, 0, 0, 0.5]; F[:, 3] = [1, 0, 0, -0.5]
        dodo.box3d(F)
        threading.stack_size(64 * 1024)
        said = []
        def work():
            mapped = 0
            with open("/proc/self/maps") as maps:
                for line in maps:
                    low, high = line.split()[0].split("-")
                    mapped += int(high, 16) - int(low, 16)
            resource.setrlimit(resource.RLIMIT_AS, (mapped + 256 * 1024, resource.RLIM_INFINITY))
            try:
                dodo.box3d(F)
                said.append("computed")
            except MemoryError as error:
                said.append(str(error))
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        thread = threading.Thread(target=work); thread.start(); thread.join()
        print(said[0])
    """)
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    assert run.stdout.strip() == (
        "out of memory: this thread has less than 160 KiB of stack left, and no stack of 512 KiB could be mapped to "
        "run the call on: give the thread a larger stack (threading.stack_size(1024 * 1024) before starting it)")


# --- total_density of float16 ---------------------------------------------------------------------------------------

def test_float16_densities_are_summed_in_float64():
    """Before: float16 densities were summed in float16: six densities of 20,000 gave inf (float16 ends at 65504),
    and small ones beside a large one were lost (2048 + 1 is 2048 in float16). Now float16 is summed as float64,
    as integers are; float32 keeps its dtype (test_total_density pins it)."""
    from dodo import conventions

    F = np.zeros((2, 6, 4), dtype=np.float16)
    F[..., 0] = 20000
    total = conventions.total_density(F)
    assert total.dtype == np.float64 and np.array_equal(total, [120000.0, 120000.0])
    assert np.array_equal(conventions.total_density(-F, absolute=True), [120000.0, 120000.0])
    G = np.zeros((6, 4), dtype=np.float16)
    G[:, 0] = [2048, 1, 1, 1, 1, 1]
    assert conventions.total_density(G) == 2053.0
    assert conventions.total_density(G.astype(np.float32)).dtype == np.float32


# --- input names in messages -----------------------------------------------------------------------------------------

def _dodo(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dodo", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("name, shown", [("a  b.h5", "'a  b.h5'"), ("new\nfile.h5", "'new\\nfile.h5'"),
                                         ("t\tab.h5", "'t\\tab.h5'"), ("two words.h5", "'two words.h5'")],
                         ids=["two-spaces", "newline", "tab", "one-space"])
def test_a_missing_input_is_named_quoted_where_its_name_holds_white_space(tmp_path, name, shown):
    """Before: `dodo apply 'a  b.h5'` said `cannot read a b.h5: no such file`, $'new\\nfile.h5' `cannot read new
    file.h5`: `_atomic.check_input_file` wrote names unquoted and the commands' printers joined every run of white
    space into one space, so the name printed was not the file's. Now such a name is quoted with its escapes
    (Python's repr), and the printers join the lines of a message only (dodo._cli_common.one_line), keeping the
    spaces inside a line. The same for `dodo score` and `dodo simulate --input` (the training commands' and `dodo
    info`'s printers too)."""
    for args in (("apply", name), ("score", "box3d", name), ("simulate", "out.h5", "--input", name)):
        command = f"dodo {args[0]}"
        run = _dodo(*args, cwd=tmp_path)
        assert run.returncode == 2, (command, run.returncode, run.stderr)
        assert run.stderr.startswith(f"{command}: error: cannot read {shown}: no such file"), (command, run.stderr)
        assert run.stderr.count("\n") == 1, run.stderr


def test_an_input_directory_is_named_quoted_and_plain_names_stay_plain(tmp_path):
    """A directory given as input is named the same way (`'d  ir' is a directory, not a regular file`); a name of
    printing characters without white space is written as before, unquoted (guard)."""
    (tmp_path / "d  ir").mkdir()
    run = _dodo("apply", "d  ir", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.startswith(
        "dodo apply: error: 'd  ir' is a directory, not a regular file; give "), run.stderr
    run = _dodo("apply", "plain.h5", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.startswith("dodo apply: error: cannot read plain.h5: no such file"), \
        run.stderr


@pytest.mark.parametrize("name, shown", [("bad  name.h5", "'bad  name.h5'"), ("bad\nname.h5", "'bad\\nname.h5'")],
                         ids=["two-spaces", "newline"])
def test_a_file_that_is_not_hdf5_is_named_quoted_where_its_name_holds_white_space(tmp_path, name, shown):
    """Before: `dodo apply $'bad\\nname.h5'` (a text file) said `bad name.h5: not a readable HDF5 file ...`, and
    'two  sp.h5' `two sp.h5`: dodo.emu_files wrote its names unquoted too. Now they are quoted as
    check_input_file's are (the file's other messages alike)."""
    (tmp_path / name).write_text("x")
    for args in (("apply", name), ("score", "box3d", name)):
        run = _dodo(*args, cwd=tmp_path)
        assert run.returncode == 2 and run.stderr.startswith(
            f"dodo {args[0]}: error: {shown}: not a readable HDF5 file ("), run.stderr
        assert run.stderr.count("\n") == 1, run.stderr


def test_one_line_joins_lines_and_keeps_spaces_within_a_line():
    from dodo._cli_common import one_line

    assert one_line("cannot read 'a  b.h5':\n   no such file\n") == "cannot read 'a  b.h5': no such file"
    assert one_line(ValueError("x\r\ny")) == "x y"


# --- dodo simulate in a directory made read-only ---------------------------------------------------------------------

#: `dodo simulate ARGS` whose output directory is made read-only (chmod 555, by its owner, as a user or a cleaner
#: script would) right after the first write of WHICH ("checkpoint" or "database") of the run: deterministic,
#: where a chmod from outside raced the run.
READ_ONLY_AFTER = textwrap.dedent("""
    import os, sys
    import dodo.qke.campaign as campaign
    from dodo.cli import main
    which = sys.argv[1]
    def after_first(function):
        done = []
        def wrapped(path, *args, **kwargs):
            result = function(path, *args, **kwargs)
            if not done:
                done.append(path)
                os.chmod(os.path.dirname(os.path.abspath(path)), 0o555)
            return result
        return wrapped
    if which == "checkpoint":
        campaign.atomic_write = after_first(campaign.atomic_write)
    else:
        campaign._write_database = after_first(campaign._write_database)
    sys.exit(main(sys.argv[2:]))
""")


@needs_setpriv
@pytest.mark.parametrize("which", ["database", "checkpoint"])
def test_simulate_whose_directory_turns_read_only_says_to_make_it_writable_and_rerun(tmp_path, which):
    """Before: `dodo simulate d/s.h5` whose directory was made read-only after a checkpoint ended with `cannot
    write d/s.h5.partial.npz: no permission to create files in d (or it is on a read-only file system); choose
    another output` (the next checkpoint; the same of d/s.h5 when the database's write came first): another
    output starts the run over and leaves the checkpoint behind. Now one line names the directory, says the
    checkpoint is kept, and says to make it writable and rerun the same command, which then resumes and finishes
    (run as a user: root without CAP_DAC_OVERRIDE)."""
    directory = tmp_path / "d"
    directory.mkdir()
    output = directory / "s.h5"
    args = ["simulate", str(output), "--random", "4", "--ncell", "16", "--nphi", "8", "--batch-size", "1"]
    run = subprocess.run([*AS_A_USER, sys.executable, "-c", READ_ONLY_AFTER, which, *args], capture_output=True,
                         text=True, timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    skip_without_setpriv(run)
    directory.chmod(0o755)
    checkpoint = f"{output}.partial.npz"
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = [line for line in run.stderr.splitlines() if "error" in line]
    fix = f"make {directory} writable again (chmod u+w {directory}) and rerun the same command to resume from it"
    if which == "database":  # read-only after the first batch's database: the second checkpoint fails
        expected = (f"dodo simulate: error: cannot write the checkpoint {checkpoint}: no permission to create files in "
                    f"{directory} (made read-only while this command ran?); its earlier version (the batches before "
                    f"this one) is kept: {fix}")
    else:  # read-only after the first checkpoint: that batch's database fails
        expected = (f"dodo simulate: error: cannot write {output}: no permission to create files in {directory} (made "
                    f"read-only while this command ran?); an earlier {output} is untouched, and the checkpoint "
                    f"{checkpoint} holds the batches done: {fix}")
    assert lines == [expected], run.stderr
    assert "choose another output" not in run.stderr
    assert os.path.isfile(checkpoint)
    again = subprocess.run([*AS_A_USER, sys.executable, "-m", "dodo", *args], capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert again.returncode == 0 and "resuming: 1/4 states already simulated" in again.stderr, again.stderr
    assert not os.path.exists(checkpoint)


# --- the campaign's chunk check and DODO_CAMPAIGN_ARGS ---------------------------------------------------------------

def _real_chunk(path: Path, *extra: str) -> None:
    """`dodo simulate` of a campaign chunk of 2 states (emu, seed 1) with the campaign's own options and EXTRA."""
    run = subprocess.run([sys.executable, "-m", "dodo", "simulate", str(path), "--random", "2", "--seed", "1",
                          "--family", "emu", "--batch-size", "2", "--max-cost", "2.5", "--backend", "cpp", "--quiet",
                          *extra], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr


linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the campaign scripts are bash of Linux")


@linux_only
def test_a_chunk_made_with_other_solver_options_is_not_taken_as_this_campaigns(tmp_path):
    """Before: a complete chunk file made by a campaign with DODO_CAMPAIGN_ARGS="--ncell 16 --nphi 8" was skipped
    as finished by the campaign at the default resolution (exit 0, no word): the chunk check compared kind,
    count, seed, family and targeting, no option but --linear-only. Now the settings the file records (cells,
    directions, time step, coupling, axis, box, cost cap) are compared with the chunk's options
    (dodo.qke.cli.settings_differing): the chunk is not run, the file is kept, the line says which options
    differ, and the campaign's last line says that a rerun leaves such a file alone (was "rerun to retry"
    alone). With the same DODO_CAMPAIGN_ARGS the chunk is skipped as complete (guard)."""
    pytest.importorskip("h5py")
    from test_probe_data_loss_round15 import _campaign, _campaign_copy

    repo, env, chunks, calls = _campaign_copy(tmp_path)
    (tmp_path / "plan.txt").write_text("emu 1 2\n")
    chunk = chunks / "emu_seed1.h5"
    _real_chunk(chunk, "--ncell", "16", "--nphi", "8")
    before = chunk.read_bytes()
    done = _campaign(repo, env, tmp_path / "plan.txt")
    assert done.returncode != 0 and not calls.exists(), (done.returncode, done.stderr)
    assert (f"qke_campaign: chunk emu 1: {chunk} is a complete file of another run (solver runs of 2 states, seed 1, "
            "family emu, with --ncell 16 --nphi 8; written by `" in done.stderr and
            "`), not a chunk of this campaign (solver runs of 2 states, seed 1, family emu, with --ncell 64 --nphi 16): "
            "it is kept and the chunk not run" in done.stderr), done.stderr
    assert done.stderr.splitlines()[-1] == (
        "qke_campaign: not every chunk finished (exit 123; see above): 1 chunk file(s) of another run are kept and "
        "not run, and a rerun leaves them so: move them away or give this campaign a directory of its own "
        "(DODO_CAMPAIGN_DIR); any other chunk that failed: rerun to retry"), done.stderr
    assert chunk.read_bytes() == before
    env["DODO_CAMPAIGN_ARGS"] = "--ncell 16 --nphi 8"
    same = _campaign(repo, env, tmp_path / "plan.txt")
    assert same.returncode == 0 and same.stderr == "" and not calls.exists(), (same.returncode, same.stderr)


def test_settings_differing_names_each_option_and_compares_only_what_a_file_records(tmp_path):
    """The comparison itself: every recorded setting that differs is named with both values; a file that records
    no settings (earlier versions, another program's), or arguments that do not parse, compare as nothing."""
    h5py = pytest.importorskip("h5py")
    from dodo.qke.cli import settings_differing

    chunk = tmp_path / "c.h5"
    _real_chunk(chunk, "--ncell", "16", "--nphi", "8")
    with h5py.File(chunk, "r") as handle:
        attrs = dict(handle.attrs)
    common = [str(chunk), "--random", "2", "--seed", "1", "--family", "emu", "--batch-size", "2"]
    assert settings_differing(attrs, [*common, "--max-cost", "2.5", "--ncell", "16", "--nphi", "8"]) == []
    assert settings_differing(attrs, [*common, "--ncell", "16", "--nphi", "8", "--flavour-cfl", "0.5",
                                      "--hamiltonian-filter", "none", "--axis", "x", "--box-length", "4"]) == [
        ("--flavour-cfl", "1", "0.5"), ("--hamiltonian-filter", "emu", "none"), ("--axis", "fastest", "x"),
        ("--box-length", "not given", "4"), ("--max-cost", "2.5", "not given")]
    assert settings_differing({"complete": True}, common) == []
    assert settings_differing(attrs, [*common, "--no-such-option"]) == []
    linear = {"kind": "linear_growth_labels", "settings": '{"ncell": 64, "nphi_equator": 16, "max_cost": 2.5}'}
    assert settings_differing(linear, [*common, "--max-cost", "2.5", "--linear-only"]) == []
    assert settings_differing(linear, [*common, "--ncell", "32", "--linear-only"]) == [
        ("--ncell", "64", "32"), ("--max-cost", "2.5", "not given")]
