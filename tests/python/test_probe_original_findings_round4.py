"""The outside probe's five original findings, fresh variants, round four (original findings round four).

Fixed here: a package whose re-signed dodo.training_states is nested deeper than Python's json reads loaded, but
`dodo score` of it ended "maximum recursion depth exceeded ..."; the campaign took a complete chunk drawn to
another flux-factor limit (DODO_CAMPAIGN_ARGS="--max-flux-factor 0.7") as its own; tools/scale_correction_in_package.py
and tools/gate_growth_in_package.py dropped a package's dodo.training_states, so `dodo score` of the re-exported
package no longer warned of training states. Guards (pass before and after): stable cells of every scale and speed,
subnormal species among them, keep their bits (Box3D's prepare_block change of this session); a fork after a thread
of a small stack used Dodo (its calls ran on a mapped stack), from Python and from a C host; the cap-edge test vectors refuse a re-signed cap;
malformed dodo.training_states entries are not read and the package loads.
"""

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import dodo
from dodo import _core
from dodo._state_hashes import TRAINING_STATES_KEY, package_training_states, training_states_entry

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[2]
MODEL = os.path.join(os.path.dirname(dodo.__file__), "models", "qke_default.onnx")
DATA = ROOT / "tests/data/qke/ood_probe_isotropic.h5"
CHILD_TIMEOUT_S = 300  # a hang guard only

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
DEEP = "[" * 100000 + "]" * 100000


def _default_with(key, value, edit_box3d=None, drop_vectors=()):
    """The default package with metadata KEY set to VALUE (added if absent; None: unchanged), re-signed."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(MODEL)
    entries = {entry.key: entry for entry in model.metadata_props}
    if key is not None:
        entry = entries.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    if edit_box3d:
        box = json.loads(entries["dodo.box3d"].value)
        box.update(edit_box3d)
        entries["dodo.box3d"].value = json.dumps(box)
    if drop_vectors:
        vectors = json.loads(entries["dodo.test_vectors"].value)
        n = len(vectors["F_init"])
        entries["dodo.test_vectors"].value = json.dumps({
            k: [x for i, x in enumerate(v) if i not in drop_vectors] if isinstance(v, list) and len(v) == n else v
            for k, v in vectors.items()})
    return _core.with_content_digest(model.SerializeToString())


# --- fixed: dodo.training_states nested too deep ---------------------------------------------------------------------

@needs_runtime
def test_dodo_score_of_a_package_whose_training_states_are_nested_too_deep_scores(tmp_path, capsys):
    """Before: the package loaded (the runtime does not read the entry) and `dodo score` of it ended
    "dodo score: error: maximum recursion depth exceeded while decoding a JSON array from a unicode string", exit 2.
    Now such an entry is one this dodo does not read, as any other malformed one: the score runs, with no
    training_states_scored."""
    from cli_helpers import run

    assert package_training_states({"dodo.training_states": DEEP}) is None
    package = tmp_path / "deep.onnx"
    package.write_bytes(_default_with("dodo.training_states", DEEP))
    dodo.Closure(package)
    code, out, err = run(capsys, ["score", str(package), str(DATA), "--json", "-"])
    assert code == 0 and "recursion" not in err, err
    assert "training_states_scored" not in json.loads(out)


def test_malformed_training_states_entries_are_not_read():
    """Guard: entries that are not this dodo's record (not JSON, another hash, hashes not base64 or not whole
    words, numbers beyond int's digit limit) read as no record."""
    key = {"hash": TRAINING_STATES_KEY, "states": 1}
    for value in ["xyz", "[1, 2]", "null", '{"hash": NaN}', '{"hash": ' + "9" * 5000 + "}",
                  json.dumps({**key, "hashes": 5}), json.dumps({**key, "hashes": "!!!"}),
                  json.dumps({**key, "hashes": base64.b64encode(b"1234567").decode()}),
                  json.dumps({"hash": ["x"], "states": 1, "hashes": ""})]:
        assert package_training_states({"dodo.training_states": value}) is None, value
    words = np.array([1, 2**63 + 5], np.uint64)
    assert package_training_states({"dodo.training_states": training_states_entry(words)}).tolist() == words.tolist()


# --- fixed: a re-exported package keeps dodo.training_states ----------------------------------------------------------

@needs_runtime
def test_a_rescaled_package_keeps_the_states_it_trained_on(tmp_path):
    """Before: tools/scale_correction_in_package.py (and gate_growth_in_package.py, through rebuilt_ensemble)
    re-exported a package without its dodo.training_states: `dodo score` of the scaled package said nothing of
    the states it was trained on. Now the record is carried over."""
    pytest.importorskip("torch")
    from cli_helpers import run_tool

    words = np.array([1, 2**63 + 5, 3], np.uint64)
    package = tmp_path / "with_states.onnx"
    package.write_bytes(_default_with("dodo.training_states", training_states_entry(words)))
    scaled = tmp_path / "scaled.onnx"
    done = run_tool("scale_correction_in_package.py", package, "--factor", "1.05", "-o", scaled)
    assert done.returncode == 0, done.stderr
    closure = dodo.Closure(scaled)
    recorded = package_training_states(closure.metadata)
    assert recorded is not None and recorded.tolist() == words.tolist()


# --- fixed: the campaign compares the flux-factor limit the states were drawn to -------------------------------------

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the campaign scripts are bash of Linux")


@linux_only
def test_a_chunk_drawn_to_another_flux_factor_limit_is_not_taken_as_this_campaigns(tmp_path):
    """Before: a complete chunk drawn to the emu family's flux factor 0.9 was skipped as finished by a campaign
    with DODO_CAMPAIGN_ARGS="--max-flux-factor 0.7" (exit 0, no word; the file records the limit in `source`).
    Now the chunk is not run, the file is kept, the line names the limit on both sides. The same limit given
    explicitly (0.9) still counts the chunk as done (guard)."""
    pytest.importorskip("h5py")
    from test_probe_data_loss_round15 import _campaign, _campaign_copy
    from test_probe_openitems8 import _real_chunk

    repo, env, chunks, calls = _campaign_copy(tmp_path)
    (tmp_path / "plan.txt").write_text("emu 1 2\n")
    chunk = chunks / "emu_seed1.h5"
    _real_chunk(chunk)
    before = chunk.read_bytes()
    env["DODO_CAMPAIGN_ARGS"] = "--max-flux-factor 0.7"
    done = _campaign(repo, env, tmp_path / "plan.txt")
    assert done.returncode != 0 and not calls.exists(), (done.returncode, done.stderr)
    assert "family emu, with --max-flux-factor 0.9; written by `" in done.stderr, done.stderr
    assert "family emu, with --max-flux-factor 0.7): it is kept and the chunk not run" in done.stderr, done.stderr
    assert chunk.read_bytes() == before
    env["DODO_CAMPAIGN_ARGS"] = "--max-flux-factor 0.9"
    same = _campaign(repo, env, tmp_path / "plan.txt")
    assert same.returncode == 0 and same.stderr == "" and not calls.exists(), (same.returncode, same.stderr)


def test_settings_differing_compares_the_draws_limit_and_oversampling():
    """The limit is compared where the file records it with a family (or --max-flux-factor is given): the first
    campaign's files record 0.8 and no family and still count as the emu plan's chunks; a targeted chunk's
    oversampling (recorded 6, the default) against --oversample."""
    from dodo.qke.cli import settings_differing

    common = ["x.h5", "--random", "2", "--seed", "1", "--family", "emu", "--max-cost", "2.5"]
    emu = {"settings": "{}", "source": json.dumps({"random": 2, "random_seed": 1, "max_flux_factor": 0.9,
                                                   "family": "emu"})}
    assert settings_differing(emu, common) == []
    assert settings_differing(emu, [*common, "--max-flux-factor", "0.7"]) == [("--max-flux-factor", "0.9", "0.7")]
    first = {"settings": "{}", "source": json.dumps({"random": 2, "random_seed": 1, "max_flux_factor": 0.8})}
    assert settings_differing(first, common) == []
    assert settings_differing(first, [*common, "--max-flux-factor", "0.8"]) == []
    unrecorded = {"settings": "{}", "source": json.dumps({"random": 2, "max_flux_factor": None, "family": "emu"})}
    assert settings_differing(unrecorded, [*common, "--max-flux-factor", "0.7"]) == []
    targeted = {"settings": "{}", "source": json.dumps({"random": 2, "max_flux_factor": None, "family": "emu",
                                                        "selected_by": "default", "oversample": 6})}
    assert settings_differing(targeted, [*common, "--select-by", "default"]) == []
    assert settings_differing(targeted, [*common, "--select-by", "default", "--oversample", "8"]) == [
        ("--oversample", "6", "8")]
    assert settings_differing({"settings": "{}", "source": "[[["}, common) == []


# --- guards -------------------------------------------------------------------------------------------------------

def _stable_fuzz(rng, n):
    """Cells of every scale (1e-320 to 1e300), zero and subnormal species, at rest and moving (W to 1e6)."""
    n_species = rng.uniform(0, 1, (n, 6))
    flux_factor = rng.uniform(0, 1.0, (n, 6)) ** rng.choice([0.3, 1, 3])
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=2, keepdims=True)
    F = np.zeros((n, 6, 4))
    F[:, :, 0] = n_species
    F[:, :, 1:] = (n_species * flux_factor)[..., None] * direction
    F[rng.random((n, 6)) < 0.15] = 0
    scale = 10.0 ** rng.uniform(-320, 300, n)
    fixed = rng.random(n) < 0.3
    scale[fixed] = 10.0 ** rng.choice([-300, -290, -200, 0, 32, 300], fixed.sum())
    F *= scale[:, None, None]
    sub = rng.random((n, 6)) < 0.1
    F[sub] = F[sub] * 1e-310 / np.maximum(np.abs(F[sub]).max(axis=1, keepdims=True), 1e-320)
    F[sub] += rng.integers(-3, 4, (sub.sum(), 4)) * 5e-324 * rng.choice([0, 1], (sub.sum(), 1))
    F[:, :, 0] = np.abs(F[:, :, 0])
    W = 10.0 ** rng.uniform(0, rng.choice([0.01, 1, 3, 6]), n)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    u = np.zeros((n, 4))
    u[:, 0] = W
    u[:, 1:] = np.sqrt(W ** 2 - 1)[:, None] * v
    u[rng.random(n) < 0.2] = [1, 0, 0, 0]
    # realizable species only (an unrealizable one is documented to be made realizable): |F| <= n per species,
    # judged on each species scaled by a power of two so that subnormal ones count exactly
    scaled = np.ldexp(F, -np.frexp(np.abs(F).max(axis=2))[1][..., None])
    realizable = np.all(scaled[:, :, 0] >= np.linalg.norm(scaled[:, :, 1:], axis=2), axis=1)
    return F[realizable], u[realizable]


@needs_runtime
@pytest.mark.parametrize("seed", [1, 2])
def test_stable_cells_of_every_scale_and_speed_keep_their_bits(seed):
    """Every cell the closure or Box3D does not correct (status NO_CROSSING, FLUX_FACTOR, ZERO_DENSITY or
    BAD_VELOCITY, alone or together) comes back bit for bit, growth and uncertainty 0; both evaluators."""
    rng = np.random.default_rng(seed)
    rejected_as_given = np.uint64(1 | 2 | 16 | 32)
    for _ in range(4):
        F, u = _stable_fuzz(rng, 1500)
        for closure in (dodo.Closure(threads=2, chunk_size=7), dodo.Closure(threads=1, evaluator="onnxruntime")):
            r = closure.apply(F, u=u)
            kept = (r.status != 0) & ((r.status & ~rejected_as_given) == 0)
            assert kept.sum() > 100
            assert r.F_pred[kept].tobytes() == F[kept].tobytes()
            assert not np.any(r.growth_rate[kept]) and not np.any(r.uncertainty[kept])
        box = dodo.box3d(F, u=u)
        kept = (box.status != 0) & ((box.status & ~rejected_as_given) == 0)
        assert box.F_box[kept].tobytes() == F[kept].tobytes()


FORK_AFTER_SMALL_STACK = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    import dodo
    sys.path.insert(0, sys.argv[1])
    from test_probe_original_findings_round2 import _crossing
    F = np.stack([_crossing()] * 64)
    ref = dodo.Closure(threads=2).apply(F).F_pred.tobytes()
    ref_box = dodo.box3d(F).F_box.tobytes()
    threading.stack_size(32 * 1024)

    def fresh():
        return dodo.Closure(threads=2).apply(F).F_pred.tobytes() == ref and dodo.box3d(F).F_box.tobytes() == ref_box

    def in_a_small_thread(work):
        got = []
        thread = threading.Thread(target=lambda: got.append(work()))
        thread.start()
        thread.join()
        return got == [True]

    statuses = []
    closure = None

    def small():  # uses Dodo on its mapped stack, then forks from this thread
        global closure
        closure = dodo.Closure(threads=2)
        assert closure.apply(F).F_pred.tobytes() == ref
        pid = os.fork()
        if pid == 0:
            ok = fresh() and closure.apply(F).F_pred.tobytes() == ref and in_a_small_thread(fresh)
            os._exit(0 if ok else 3)
        statuses.append(os.waitpid(pid, 0)[1])

    assert in_a_small_thread(lambda: small() is None)
    pid = os.fork()  # the main thread forks after the small thread used Dodo
    if pid == 0:
        ok = in_a_small_thread(lambda: fresh() and closure.apply(F).F_pred.tobytes() == ref) and fresh()
        os._exit(0 if ok else 3)
    statuses.append(os.waitpid(pid, 0)[1])
    print(statuses)
""")


@needs_runtime
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_after_a_small_stack_thread_used_dodo():
    """A thread of a 32 KiB stack runs Dodo's calls on a stack mapped for it (gil.hpp); forked from that thread,
    and from the main thread afterwards, the children (their own small threads too) get the parent's bits."""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", FORK_AFTER_SMALL_STACK, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout.strip() == "[0, 0]", (done.stdout, done.stderr)


@needs_runtime
@pytest.mark.parametrize("moved, vector", [(1.2e-9, 11), (-1.2e-9, 12), (5e-3, 11), (-5e-3, 12)])
@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
def test_a_resigned_cap_moved_either_way_fails_a_cap_edge_vector(moved, vector, evaluator):
    """The default package's cap-edge vectors (11: just above the cap, 12: just below) refuse a re-signed
    max_flux_factor moved by more than 1e-9 of itself, under both evaluators; with the vector on the other side
    dropped the remaining one still refuses it."""
    cap = 0.98
    package = _default_with(None, None, edit_box3d={"max_flux_factor": cap * (1 + moved)})
    with pytest.raises(RuntimeError, match=f"DODO_ERROR_SELF_TEST: self-test failed: test vector {vector} differs"):
        dodo.Closure(package, evaluator=evaluator)
    other = 12 if vector == 11 else 11
    package = _default_with(None, None, edit_box3d={"max_flux_factor": cap * (1 + moved)}, drop_vectors=(other,))
    with pytest.raises(RuntimeError, match="DODO_ERROR_SELF_TEST: self-test failed: test vector 11 differs"):
        dodo.Closure(package, evaluator=evaluator)


C_FORK_AFTER_SMALL_STACK = textwrap.dedent(r"""
    #define _GNU_SOURCE
    #include <dodo/dodo.h>
    #include <pthread.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/wait.h>
    #include <unistd.h>
    enum { N = 200 };
    static double F[N][6][4], ref[N][6][4];
    static const char* model;
    static dodo_closure* h;
    static int statuses[2];
    static int same(dodo_closure* c) {  /* heap, not _Thread_local: a 32 KiB thread has no room for its TLS */
      double (*out)[6][4] = malloc(sizeof(double[N][6][4]));
      int ok = out && dodo_apply(c, N, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) == DODO_OK &&
               memcmp(out, ref, sizeof ref) == 0;
      free(out);
      return ok;
    }
    static int fresh(void) {
      dodo_options o; dodo_options_init(&o); o.threads = 2;
      dodo_closure* c = NULL; char err[256];
      int ok = dodo_closure_create(model, &o, &c, err, sizeof err) == DODO_OK && same(c);
      if (c) dodo_closure_destroy(c);
      return ok;
    }
    static void* fresh_and_parents(void* result) { *(int*)result = fresh() && same(h); return NULL; }
    static int in_small_thread(void* (*work)(void*), int* result) {
      pthread_attr_t a; pthread_attr_init(&a); pthread_attr_setstacksize(&a, 32 * 1024);
      pthread_t t;
      if (pthread_create(&t, &a, work, result)) return 0;
      pthread_join(t, NULL);
      return 1;
    }
    static void* small(void* ran) {  /* a 32 KiB thread: makes and uses a handle, then forks */
      dodo_options o; dodo_options_init(&o); o.threads = 2; char err[256];
      if (dodo_closure_create(model, &o, &h, err, sizeof err) != DODO_OK || !same(h)) return NULL;
      pid_t p = fork();
      if (p == 0) { alarm(120); int r = 0; exit(same(h) && fresh() && in_small_thread(fresh_and_parents, &r) && r ? 0 : 3); }
      waitpid(p, &statuses[0], 0);
      *(int*)ran = 1;
      return NULL;
    }
    int main(int argc, char** argv) {
      model = argv[1];
      (void)argc;
      for (int c = 0; c < N; ++c)
        for (int a = 0; a < 6; ++a) { F[c][a][0] = 1 + 0.1 * a + 0.001 * c; F[c][a][3] = a == 3 ? -0.4 : 0.3; }
      dodo_options o; dodo_options_init(&o); o.threads = 1; dodo_closure* r = NULL; char err[256];
      if (dodo_closure_create(model, &o, &r, err, sizeof err) != DODO_OK) { printf("%s\n", err); return 1; }
      dodo_apply(r, N, &F[0][0][0], NULL, NULL, NULL, &ref[0][0][0], NULL, NULL);
      dodo_closure_destroy(r);
      int ran = 0;
      if (!in_small_thread(small, &ran) || !ran) { printf("the small thread did not run\n"); return 1; }
      pid_t p = fork();  /* the main thread, after the small thread ended */
      if (p == 0) { alarm(120); int res = 0; exit(in_small_thread(fresh_and_parents, &res) && res && same(h) && fresh() ? 0 : 3); }
      waitpid(p, &statuses[1], 0);
      printf("%d %d\n", statuses[0], statuses[1]);
      return 0;
    }
""")


@pytest.mark.skipif(sys.platform != "linux", reason="a Linux C host")
def test_c_host_forks_after_a_small_stack_thread_used_dodo(tmp_path):
    """The C API's calls from a 32 KiB thread run on a stack mapped for it: that thread forks after using a
    handle (the child applies on it, makes its own, and a 32 KiB thread of the child does both), and the main
    thread forks after the small thread ended; every child gets the parent's bits and exits."""
    from capi_host import compile_host, default_model

    model = default_model()
    program = compile_host(tmp_path, "small_stack_fork", C_FORK_AFTER_SMALL_STACK)
    done = subprocess.run([str(program), model], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout.strip() == "0 0", (done.returncode, done.stdout, done.stderr)
