"""Do the docs tell the truth (outside probe, round two): claims of README.md, docs/runtime.md,
docs/qke.md and `dodo plot --help` that are cheap to keep true automatically, checked against the
code, the repository's layout and the files the docs cite.

- `dodo plot --overwrite`'s help says what the guard does: without it, a file that is an image of
  the asked format but no plot a Dodo command wrote is refused (the help said "an image of its
  format" was replaced);
- README's per-cell status table: a rejected cell (`ZERO_DENSITY`, `BAD_VELOCITY`) comes back as
  the input only where that is realizable (the table said "the input");
- README's bad-input corpus counts (130 bad cells beside 2 controls, 15 bad calls);
- README's "Design": the modules that register subcommands, the layout's top-level folders, the
  number of speed rounds docs/speed.md records;
- docs/runtime.md's held-out score command selects the 130 states its number is of;
- no doc of this list points into the project's spec folder, which a clone does not have.

Fast (about a second), no torch, no network; the data check skips without h5py or data/qke.
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dodo

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNTIME_MD = ROOT / "docs" / "runtime.md"
#: The user-facing docs this round read (the reliability records quote history and are left out).
DOCS = [README] + sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("reliability"))


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _status_row(flag: str) -> str:
    row = next((line for line in _read(README).splitlines() if line.startswith(f"| `{flag}` |")), None)
    assert row, f"README's per-cell status table has no row for {flag}"
    return row


def test_plot_overwrite_help_says_what_is_replaced(tmp_path):
    """The help named "an image of its format" as what is replaced unasked; the guard replaces only a
    plot a Dodo command wrote (outside probe, docs round two)."""
    from dodo._output_guard import refuse_replacing_with_plot
    from dodo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["plot"]
    overwrite = next(a for a in sub._actions if "--overwrite" in a.option_strings)
    assert "an image of its format" not in overwrite.help
    assert "a Dodo command wrote" in overwrite.help
    # ... and that is the behaviour: a PNG that no Dodo command wrote is kept without --overwrite.
    image = tmp_path / "figure.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ValueError, match="that a Dodo plot command wrote"):
        refuse_replacing_with_plot([str(image)], "dodo plot", False, "--overwrite")
    refuse_replacing_with_plot([str(image)], "dodo plot", True, "--overwrite")  # asked: allowed


def _realizable(F: np.ndarray) -> bool:
    n = F[..., 0]
    return bool(np.all(n >= 0) and np.all(np.sqrt(np.sum(F[..., 1:] ** 2, axis=-1)) <= n))


def test_zero_density_cell_is_the_input_only_where_realizable():
    """README said `ZERO_DENSITY` returns "the input"; a vacuum cell whose species has |F| > n comes
    back with that flux dropped, as docs/runtime.md says."""
    assert "the input where it is realizable" in _status_row("ZERO_DENSITY")
    realizable = np.zeros((6, 4))
    realizable[1] = [1e-301, 0.0, 0.0, 0.5e-301]
    result = dodo.box3d(realizable)
    assert int(result.status) == int(dodo.CellStatus.ZERO_DENSITY)
    assert np.array_equal(result.F_box, realizable)
    outside = np.zeros((6, 4))
    outside[0] = [1e-310, 0.0, 0.0, 2e-310]
    result = dodo.box3d(outside)
    assert int(result.status) == int(dodo.CellStatus.ZERO_DENSITY)
    assert not np.array_equal(result.F_box, outside) and _realizable(result.F_box)


def test_bad_velocity_cell_is_the_input_only_where_realizable():
    """README said `BAD_VELOCITY` (C API) returns "the input"; a cell that is not realizable is
    clamped like `NEGATIVE_DENSITY` / `FLUX_FACTOR` cells."""
    from libdodo_ctypes import Options, load_libdodo

    assert "the input where it is realizable" in _status_row("BAD_VELOCITY")
    lib = load_libdodo()
    options = Options()
    lib.dodo_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.threads = 0
    handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(512)
    assert lib.dodo_closure_create(b"box3d", ctypes.byref(options), ctypes.byref(handle), message, 512) == 0
    try:
        F = np.zeros((2, 6, 4))
        F[:, 0] = [1.0, 0.0, 0.0, 0.5]
        F[:, 3] = [1.0, 0.0, 0.0, -0.5]
        F[1, 2] = [-0.5, 0.0, 0.0, 0.0]  # the second cell is not realizable
        u = np.array([[2.0, 0.0, 0.0, 0.0]] * 2)  # not normalised
        F_pred, status = np.zeros_like(F), np.zeros(2, np.uint32)
        doubles = ctypes.POINTER(ctypes.c_double)
        code = lib.dodo_apply(handle, 2, F.ctypes.data_as(doubles), None, u.ctypes.data_as(doubles), None,
                              F_pred.ctypes.data_as(doubles), None, status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)))
        assert code == 0
        assert [lib.dodo_cell_status_name(int(s)) for s in status] == [b"BAD_VELOCITY"] * 2
        assert np.array_equal(F_pred[0], F[0])
        assert not np.array_equal(F_pred[1], F[1]) and _realizable(F_pred[1])
    finally:
        lib.dodo_closure_destroy(handle)


def test_bad_input_corpus_counts_are_the_readmes():
    from bad_inputs import python_error_cases, value_cases

    cases = value_cases()
    cells = {group: 0 for group in ("control", "bad")}
    for case in cases:
        count = np.asarray(case.F).reshape(-1, 6, 4).shape[0]
        cells["control" if case.name.startswith("physical") else "bad"] += count
    text = _squeezed(_read(README))
    quoted = re.search(r"\): ([0-9,]+) generated bad cells, beside ([0-9]+) good controls .*? and ([0-9]+) bad calls,",
                       text)
    assert quoted, "README's Reliability section no longer counts the bad-input corpus where this test looks"
    assert int(quoted.group(1).replace(",", "")) == cells["bad"]
    assert int(quoted.group(2)) == cells["control"]
    assert int(quoted.group(3)) == len(python_error_cases())


def test_design_names_every_module_that_registers_subcommands():
    from dodo.cli import _SUBCOMMAND_MODULES

    bullet = _squeezed(re.search(r"- \*\*Command line\*\*.*?(?=\n- |\n\n)", _read(README), re.S).group(0))
    for module in _SUBCOMMAND_MODULES:
        relative = module.removeprefix("dodo.").replace(".", "/") + ".py"
        assert f"`{relative}`" in bullet, f"README's Design section does not name {relative}"


def test_layout_names_every_tracked_top_level_folder():
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/")[0] for line in listed.splitlines() if "/" in line and not line.startswith(".")}
    layout = _squeezed(_read(README)[_read(README).index("\nLayout: "):])
    missing = sorted(f for f in folders if not re.search(rf"`{re.escape(f)}/", layout))
    assert not missing, f"top-level folders that README's Layout leaves out: {missing}"


_SMALL = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_SMALL_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
                   "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
                   "eighteenth", "nineteenth"]
#: English number words up to 39, cardinal ("twenty-one") and ordinal ("twenty-first") -> value.
_CARDINALS = {word: i + 1 for i, word in enumerate(_SMALL)}
_ORDINALS = {word: i + 1 for i, word in enumerate(_SMALL_ORDINALS)}
for _tens, _value in (("twenty", 20), ("thirty", 30)):
    _CARDINALS[_tens] = _value
    _ORDINALS[_tens[:-1] + "ieth"] = _value
    for _i in range(9):
        _CARDINALS[f"{_tens}-{_SMALL[_i]}"] = _value + _i + 1
        _ORDINALS[f"{_tens}-{_SMALL_ORDINALS[_i]}"] = _value + _i + 1


def test_readme_counts_the_speed_rounds_of_docs_speed_md():
    said = re.search(r"The ([a-z-]+) rounds of speed work", _read(README))
    assert said, "README no longer says how many rounds of speed work docs/speed.md records"
    words = re.findall(r"^\*\*([A-Z][a-z-]+) round\*\*", _read(ROOT / "docs" / "speed.md"), re.M)
    assert words and all(w.lower() in _ORDINALS for w in words), words
    assert _CARDINALS[said.group(1)] == max(_ORDINALS[w.lower()] for w in words)


def test_held_out_score_command_selects_the_states_its_number_is_of():
    h5py = pytest.importorskip("h5py")
    text = _squeezed(_read(RUNTIME_MD))
    claim = re.search(r"([0-9.e-]+) on the ([0-9,]+) held-out solver states .*?; ([0-9.e-]+) against [0-9.e-]+ on all "
                      r"([0-9,]+) held out since [0-9-]+, `(data/qke/[^`]+)`\).*?`dodo score default (data/qke/[^`]+)`",
                      text)
    assert claim, "docs/runtime.md no longer gives the held-out scores and their command where this test looks"
    counts = []
    for pattern in (claim.group(6), claim.group(5)):
        files = sorted(glob.glob(str(ROOT / pattern)))
        if not files:
            pytest.skip(f"no {pattern} here")
        total = 0
        for name in files:
            with h5py.File(name, "r") as f:
                total += f["F4_initial(1|ccm)"].shape[0]
        counts.append(total)
    assert counts == [int(claim.group(2).replace(",", "")), int(claim.group(4).replace(",", ""))]


def test_docs_point_to_no_spec_outside_the_repository():
    """docs/qke.md named `spec/data.md` and docs/runtime.md `../shared/spec/physics.md`: neither is in
    a clone of the repository."""
    found = []
    for path in DOCS:
        for number, line in enumerate(_read(path).splitlines(), 1):
            if re.search(r"\.\./shared/|(?<![\w/.])spec/[\w.-]+\.md", line):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, f"references to spec files outside the repository: {found}"


def test_package_digests_are_what_model_package_md_says():
    """docs/model_package.md's two digests, computed as it describes them (its hand-check command for
    the content digest, its byte layout for the metadata digest), equal the shipped default's."""
    import hashlib
    import struct

    onnx = pytest.importorskip("onnx")
    from dodo.models import default_model_path

    text = _squeezed(_read(ROOT / "docs" / "model_package.md"))
    assert "del m.metadata_props[:]; print(hashlib.sha256(m.SerializeToString()).hexdigest())" in text
    assert ("sorted by key, each written as the key's length in bytes (8-byte little-endian), the key (UTF-8), "
            "the value's length, the value") in text
    model = onnx.load(default_model_path())
    entries = {p.key: p.value for p in model.metadata_props}
    assert len(entries) == 16  # "16 for an ensemble's" (the default is an ensemble package)
    metadata = hashlib.sha256()
    for key, value in sorted((k, v) for k, v in entries.items() if k != "dodo.metadata_sha256"):
        for part in (key.encode(), value.encode()):
            metadata.update(struct.pack("<Q", len(part)) + part)
    assert metadata.hexdigest() == entries["dodo.metadata_sha256"]
    del model.metadata_props[:]
    assert hashlib.sha256(model.SerializeToString()).hexdigest() == entries["dodo.content_sha256"]


def test_float16_velocity_claim():
    """README said a float16 u is a unit four-velocity to the tolerance "only at rest"; one whose
    components float16 holds exactly passes too, and a rounded one is refused."""
    text = _squeezed(_read(README))
    assert "only at rest or where float16 holds its components exactly, as (1.25, 0.75, 0, 0)" in text
    F = np.zeros((6, 4))
    F[0] = [1.0, 0.0, 0.0, 0.5]
    F[3] = [1.0, 0.0, 0.0, -0.5]
    exact = dodo.box3d(F, np.array([1.25, 0.75, 0.0, 0.0], np.float16))
    assert np.array_equal(exact.F_box, dodo.box3d(F, [1.25, 0.75, 0.0, 0.0]).F_box)
    with pytest.raises(ValueError, match="not a future-directed unit timelike"):
        dodo.box3d(F, np.array([5 / 3, 4 / 3, 0.0, 0.0], np.float16))


def test_reference_cases_are_the_readmes():
    """README "Accuracy": 15 cases x 3 settings (order 17 exact, order 17 Jedynak, order 131 exact),
    largest deviation below 1e-15 N_tot."""
    from dodo.reference import load_reference_cases, stored_settings

    text = _squeezed(_read(README))
    said = re.search(r"`python/dodo/data/box3d_cases\.json`, ([0-9]+) cases x ([0-9]+) settings: order 17 with exact Z, "
                     r"the API default, order 17 Jedynak, order 131 exact; .*?largest deviation below ([0-9.e-]+) N_tot", text)
    assert said, "README's Accuracy section no longer describes the reference cases where this test looks"
    cases = load_reference_cases()
    assert len(cases) == int(said.group(1))
    assert stored_settings(cases) == [(17, "exact"), (17, "jedynak"), (131, "exact")]
    assert len(stored_settings(cases)) == int(said.group(2))
    largest = 0.0
    for case in cases:
        for expected in case["expected"]:
            result = dodo.box3d(np.array(case["F_init"]), case["u"], lebedev_order=expected["lebedev_order"],
                                z_method=expected["z_method"])
            largest = max(largest, float(np.max(np.abs(result.F_box - np.array(expected["F_box"]))))
                          / expected["ntot_comoving"])
    assert largest < float(said.group(3))


def test_operator_lists_of_model_package_md_are_the_runtimes():
    """docs/model_package.md names operators a package may hold and operators the runtime refuses;
    both lists are checked against kAllowedOperators in cpp/src/runtime/onnx_package.cpp."""
    source = _read(ROOT / "cpp" / "src" / "runtime" / "onnx_package.cpp")
    allowed = set(re.findall(r'"(\w+)"', re.search(r"kAllowedOperators\[\] = \{(.*?)\};", source, re.S).group(1)))
    text = _squeezed(_read(ROOT / "docs" / "model_package.md"))
    listed = re.search(r"`kAllowedOperators` in `cpp/src/runtime/onnx_package\.cpp`: (.*?)\), each of which", text)
    refused = re.search(r"with `DODO_ERROR_MODEL_FORMAT` naming it .*?: control flow (.*?) and data-dependent-shape", text)
    assert listed and refused, "docs/model_package.md no longer lists the operators where this test looks"
    named_allowed = set(re.findall(r"`([A-Z]\w+)`", listed.group(1)))
    named_refused = set(re.findall(r"`([A-Z]\w+)`", refused.group(1)))
    assert len(named_allowed) >= 10 and len(named_refused) >= 10
    assert named_allowed <= allowed, named_allowed - allowed
    assert not named_refused & allowed, named_refused & allowed


def test_three_flavour_family_keeps_a_mu_tau_crossing():
    """docs/dataset.md called the three_flavour family "the same" as the emu recipe, whose states are
    kept when the e-x lepton number crosses; the sampler keeps a state when any pair crosses."""
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.linear import pair_lepton_numbers
    from dodo.qke.states import _crossing

    row = next(line for line in _read(ROOT / "docs" / "dataset.md").splitlines() if line.startswith("| three_flavour |"))
    assert "any flavour pair's lepton number crosses (mu-tau included)" in row
    directions = uniform_sphere(16)
    state = np.zeros((6, 4))  # nu_e-rich and isotropic; mu and tau with opposite small lepton fluxes
    state[0], state[3] = [1.0, 0.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]
    state[1], state[4] = [0.1, 0.0, 0.0, 0.05], [0.1, 0.0, 0.0, -0.05]
    state[2], state[5] = [0.1, 0.0, 0.0, -0.05], [0.1, 0.0, 0.0, 0.05]
    one_signed = [bool(g.min() > 0 or g.max() < 0) for g in pair_lepton_numbers(state, directions)]
    assert one_signed == [True, True, False]  # (e, mu), (e, tau) one-signed; (mu, tau) crosses
    assert _crossing(state, directions)


def test_onnxruntime_library_with_a_latin1_name_is_loaded(tmp_path):
    """docs/runtime.md said an `onnxruntime_library=` whose name is not UTF-8 "is refused"; since the
    deployment probe it goes to the runtime as bytes and loads. A fresh process: the library is
    loaded once per process, and a later request gets the loaded one."""
    import subprocess
    import sys

    from dodo._closure import onnxruntime_library_path, runtime_available

    if not runtime_available() or not onnxruntime_library_path():
        pytest.skip("no closure runtime or no onnxruntime library here")
    text = _squeezed(_read(RUNTIME_MD))
    assert "`onnxruntime_library=` so named goes to the runtime as the file system's bytes and is loaded" in text
    directory = os.fsencode(str(tmp_path)) + b"/lat\xe9"
    os.mkdir(directory)
    os.symlink(onnxruntime_library_path(), directory + b"/libonnxruntime.so.1")
    code = ("import os, sys, dodo\n"
            "path = os.fsdecode(sys.argv[1].encode('utf-8', 'surrogateescape'))\n"
            "closure = dodo.Closure(None, onnxruntime_library=path, evaluator='onnxruntime')\n"
            "print(closure.onnxruntime[0] == path)\n")
    environment = {k: v for k, v in os.environ.items() if k != "DODO_ONNXRUNTIME_LIBRARY"}
    done = subprocess.run([sys.executable, "-c", code, os.fsdecode(directory + b"/libonnxruntime.so.1")],
                          capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
