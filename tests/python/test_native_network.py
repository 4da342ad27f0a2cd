"""The runtime's own evaluator of the default model's network (issue 13; native_network.hpp).

A distilled density-residual package describes its student network in "dodo.native_network";
on the CPU the runtime evaluates that with its own kernels instead of ONNX Runtime. It must
compute what the graph computes: the same closure to float32 rounding of the network, closer to
the float64 definition than ONNX Runtime's float32 graph where the Mahalanobis form cancels
digits, with the same growth rate and uncertainty; a description that does not reproduce its
graph is refused at load, and evaluator="onnxruntime" always runs the graph."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dodo
from dodo._closure import Closure, default_model_path, runtime_available
from conftest import random_states, random_velocities

if not runtime_available():
    pytest.skip("dodo was built without the closure runtime", allow_module_level=True)
onnx = pytest.importorskip("onnx")


def moving_cells(n: int, seed: int):
    rng = np.random.default_rng(seed)
    u = random_velocities(rng, n, max_speed=0.6)
    return dodo.boost_from_rest(random_states(rng, n), u[:, None, :]), u


@pytest.fixture(scope="module")
def both():
    return Closure(threads=1), Closure(threads=1, evaluator="onnxruntime")


@pytest.fixture(scope="module")
def results(both):
    F, u = moving_cells(40_000, seed=11)
    native, graph = (closure.apply(F, u) for closure in both)
    return F, u, native, graph


def test_the_default_model_runs_on_the_native_evaluator_unless_told_otherwise(both):
    native, graph = both
    assert "dodo.native_network" in native.metadata
    assert native.evaluator == "native" and graph.evaluator == "onnxruntime"
    assert Closure("box3d").evaluator == ""
    with pytest.raises((ValueError, RuntimeError), match='unknown network evaluator "fast"'):
        Closure(evaluator="fast")


def test_native_and_graph_closures_agree_to_the_network_rounding(results):
    F, _, native, graph = results
    ntot = np.abs(F[..., 0]).sum(axis=1)
    assert np.array_equal(native.status, graph.status)
    difference = np.abs(native.F_pred - graph.F_pred).max(axis=(1, 2)) / ntot
    # float32 sums in another order: ~1e-8 N_tot; a few far-out cells where the graph's float32
    # Mahalanobis form loses digits (next test) differ up to ~1e-4 N_tot.
    assert np.quantile(difference, 0.999) < 2e-7, np.quantile(difference, 0.999)
    assert difference.max() < 5e-4, difference.max()
    for name, rtol in (("growth_rate", 2e-5), ("uncertainty", 2e-5)):
        a, b = getattr(native, name), getattr(graph, name)
        assert np.allclose(a, b, rtol=rtol, atol=1e-12 * np.abs(b).max()), name


def test_native_evaluator_is_never_farther_from_the_float64_definition_than_the_float32_graph(results):
    """Where the two disagree most, the native evaluator (the distance summed in double) is no
    farther from the float64 definition (what was trained) than the float32 graph, beyond float32
    rounding: on far-out cells of some models the graph's float32 distance moved the closure by up
    to 3e-5 N_tot; where both sit at rounding (~5e-8 N_tot, the shipped model on these cells),
    which one is nearer is a coin toss that depends on the instruction set."""
    pytest.importorskip("torch")
    from dodo.training.export import closure_float64

    F, u, native, graph = results
    ntot = np.abs(F[..., 0]).sum(axis=1)
    worst = np.argsort(-np.abs(native.F_pred - graph.F_pred).max(axis=(1, 2)) / ntot)[:6]
    box3d_settings = json.loads(Closure().metadata["dodo.box3d"])
    # The training checkpoint is not shipped; the graph evaluated in float64 stands in for it.
    from float64_graph import float64_network

    network = float64_network(default_model_path(), Closure().metadata["dodo.features"])
    reference = closure_float64(network, F[worst], u[worst], box3d_settings, flavour_images=True)
    native_error = np.abs(native.F_pred[worst] - reference["F_pred"]).max(axis=(1, 2)) / ntot[worst]
    graph_error = np.abs(graph.F_pred[worst] - reference["F_pred"]).max(axis=(1, 2)) / ntot[worst]
    assert native_error.max() < 1e-6, native_error
    assert native_error.max() <= max(graph_error.max(), 1e-7), (native_error, graph_error)


def edited_package(change) -> bytes:
    model = onnx.load(str(default_model_path()))
    entry = next(e for e in model.metadata_props if e.key == "dodo.native_network")
    description = json.loads(entry.value)
    change(description)
    entry.value = json.dumps(description)
    return dodo._core.with_content_digest(model.SerializeToString())


def double_the_scale(d):
    d["r_scale"] *= 2.0


def standardise_by_the_mean(d):
    d["input_std"] = d["input_mean"]  # a tensor of the graph, of the right shape, but not the std


def swap_hidden_layers(d):
    d["layers"][1] = list(reversed(d["layers"][1]))


def unknown_form(d):
    d["form"] = "transformer-v9"


def missing_tensor(d):
    d["input_std"] = "ensemble.student.nonexistent"


@pytest.mark.parametrize("change, message", [
    # A number given by value is held to the graph's constants (round sixteen of the C side), to
    # the tensor of its own name where the graph has one (round seventeen).
    (double_the_scale, 'gives r_scale .*, but the graph\'s "ensemble.r_scale" holds '),
    (standardise_by_the_mean, "does not reproduce the graph's head_output"),
    (swap_hidden_layers, "must have shape|must be a vector"),
    (unknown_form, 'has form "transformer-v9"; this runtime evaluates'),
    (missing_tensor, "not a float32 initializer of the graph"),
])
def test_a_description_that_is_not_the_graph_is_refused_at_load(change, message):
    package = edited_package(change)
    with pytest.raises(RuntimeError, match=message):
        Closure(package, threads=1)
    # ONNX Runtime alone ignores the description: the graph is the model.
    assert Closure(package, threads=1, evaluator="onnxruntime").evaluator == "onnxruntime"


def test_short_and_odd_batches_give_the_rows_of_a_long_one(both):
    """The kernel takes rows in blocks (4 on AVX-512): a batch of any length gives each row the
    result it gets inside a long batch, bit for bit."""
    native, _ = both
    F, u = moving_cells(1024, seed=5)
    long_run = native.apply(F, u)
    for start, stop in ((0, 1), (3, 6), (7, 14), (100, 1023)):
        part = native.apply(F[start:stop], u[start:stop])
        assert np.array_equal(part.F_pred, long_run.F_pred[start:stop])
        assert np.array_equal(part.uncertainty, long_run.uncertainty[start:stop])


def test_native_network_alone_reproduces_the_graph_on_the_runtime_features():
    """dodo._core.NativeNetwork (the evaluator alone, what bench_speed.py's native row times)
    against the package's graph in onnxruntime on the same float32 features."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from dodo.training.features import lab_features

    package = default_model_path().read_bytes()
    network = dodo._core.NativeNetwork(package)
    assert network.instruction_set in ("avx512", "avx2", "baseline")
    F, u = moving_cells(20_000, seed=17)
    X = lab_features(Closure().metadata["dodo.features"], F, u).astype(np.float32)
    X = X[np.isfinite(X).all(axis=1)]  # stable cells have no crossing features
    head, sigma, growth = network.evaluate(X)
    session = onnxruntime.InferenceSession(package, providers=["CPUExecutionProvider"])
    graph_head, graph_sigma, graph_growth = session.run(None, {"invariants": X})
    scale = np.abs(graph_head).max()
    close = np.abs(head - graph_head).max(axis=1) <= 1e-5 * scale
    assert close.mean() > 0.999, close.mean()
    assert np.allclose(sigma, graph_sigma, rtol=2e-5, atol=1e-7 * np.abs(graph_sigma).max())
    assert np.allclose(growth, graph_growth, rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"features must have shape \(n, 52\)"):
        network.evaluate(X[:, :34])


def supported_kernels(package: bytes) -> list[str]:
    kernels = []
    for name in ("avx512", "avx2", "baseline"):
        try:
            dodo._core.NativeNetwork(package, instruction_set=name)
        except ValueError:
            continue
        kernels.append(name)
    return kernels


def test_every_kernel_this_cpu_runs_reproduces_the_graph_whatever_the_batch():
    """The closure only ever runs the widest kernel of its CPU, so the narrower ones (AVX2 on the
    many clusters without AVX-512, baseline SSE2) would go untested on a test machine that has
    AVX-512. Each kernel this CPU can run: the graph's head, uncertainty and growth to float32
    rounding, and a row's result independent of the rows around it and of the call's length
    (the kernels take rows in blocks and passes of 1 to 4, and unroll their input loops)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from dodo.training.features import lab_features

    package = default_model_path().read_bytes()
    kernels = supported_kernels(package)
    assert "baseline" in kernels
    with pytest.raises(ValueError, match="cannot run the \"sse9\" kernel"):
        dodo._core.NativeNetwork(package, instruction_set="sse9")
    F, u = moving_cells(6_000, seed=23)
    X = lab_features(Closure().metadata["dodo.features"], F, u).astype(np.float32)
    X = X[np.isfinite(X).all(axis=1)]
    session = onnxruntime.InferenceSession(package, providers=["CPUExecutionProvider"])
    graph_head, graph_sigma, graph_growth = session.run(None, {"invariants": X})
    scale = np.abs(graph_head).max()
    heads = {}
    for name in kernels:
        network = dodo._core.NativeNetwork(package, instruction_set=name)
        assert network.instruction_set == name
        head, sigma, growth = network.evaluate(X)
        close = np.abs(head - graph_head).max(axis=1) <= 1e-5 * scale
        assert close.mean() > 0.999, (name, close.mean())
        assert np.allclose(sigma, graph_sigma, rtol=2e-5, atol=1e-7 * np.abs(graph_sigma).max()), name
        assert np.allclose(growth, graph_growth, rtol=2e-5, atol=1e-6), name
        for start, stop in ((0, 1), (1, 3), (5, 10), (17, 1041)):
            part = network.evaluate(X[start:stop])
            for whole, piece in zip((head, sigma, growth), part):
                assert np.array_equal(piece, whole[start:stop]), (name, start, stop)
        heads[name] = head
    # The kernels differ from each other by float32 rounding only (sums in other orders, FMA or not).
    for name, head in heads.items():
        assert np.abs(head - heads["baseline"]).max() <= 1e-5 * scale, name


def test_the_environment_variable_selects_onnxruntime_for_every_language():
    """DODO_NETWORK_EVALUATOR=onnxruntime: the graph for callers that have no option (C, C++,
    Fortran) and for Python's "auto"; an unknown value is refused with the variable named."""
    import subprocess
    import sys

    script = ("import dodo; print(dodo.Closure().evaluator, dodo.Closure(evaluator='onnxruntime').evaluator)")
    for value, expected in (("onnxruntime", "onnxruntime onnxruntime"), ("", "native onnxruntime")):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "DODO_NETWORK_EVALUATOR": value})
        assert run.returncode == 0 and run.stdout.split() == expected.split(), (run.stdout, run.stderr[-2000:])
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "DODO_NETWORK_EVALUATOR": "gpu-magic"})
    assert run.returncode != 0 and 'unknown network evaluator "gpu-magic"' in run.stderr
    assert "DODO_NETWORK_EVALUATOR" in run.stderr
