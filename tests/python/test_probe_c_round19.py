"""Outside probe of the C interface, round nineteen (docs/reliability_cpp.md, "Round nineteen").
Each test failed on the code as it was before its fix, then passed (against a build of the fixed
library: LD_LIBRARY_PATH, until the installed one is rebuilt). The JSON reader's own cases are
ctest `json` (tests/cpp/test_json.cpp)."""
from __future__ import annotations

from capi_host import compile_host, default_model, needs_runtime, run_host
from test_probe_c_round18 import MESSAGE_LENGTHS, _resigned
from test_probe_cpp_round17_capi import _edited as _graph_edited
from test_probe_cpp_round17_capi import _resigned as resigned_description
from test_probe_round16_capi import LOAD_PACKAGES


@needs_runtime
def test_a_raw_control_character_inside_a_metadata_json_string_is_refused(tmp_path):
    model = default_model()
    packages = [
        # a key of the package's own settings with a raw newline and tab in its string: no JSON
        _resigned(tmp_path, model, "dodo.box3d", lambda text: text.replace("{", '{"note": "line\none\tx", ', 1), "box3d"),
        _resigned(tmp_path, model, "dodo.native_network", lambda text: text.replace("{", '{"a\x01b": 0, ', 1), "native"),
        _resigned(tmp_path, model, "dodo.test_vectors", lambda text: text.replace("{", '{"n\x1fote": 1, ', 1), "vectors"),
        # escaped, as json.dumps writes them, the same characters are JSON and load
        _resigned(tmp_path, model, "dodo.box3d", lambda text: text.replace("{", '{"note": "line\\none\\tx", ', 1),
                  "escaped"),
    ]
    program = compile_host(tmp_path, "load_packages", LOAD_PACKAGES)
    lines = run_host(program, *packages, timeout=300)
    # Before: each loaded (status 0), though RFC 8259 wants a character below U+0020 escaped.
    for line, where, what in zip(lines[:3], ['model metadata "dodo.box3d" is not valid JSON',
                                             'metadata "dodo.native_network" is not valid JSON',
                                             'model metadata "dodo.test_vectors" is not valid JSON'],
                                 ["unescaped control character U+000A in a string at offset 14)",
                                  "unescaped control character U+0001 in a string at offset 3)",
                                  "unescaped control character U+001F in a string at offset 3)"], strict=True):
        assert line.startswith("4 model file "), line  # DODO_ERROR_MODEL_METADATA
        assert where in line and what in line, line
    assert lines[3] == "0", lines


@needs_runtime
def test_graph_names_of_megabytes_are_quoted_in_messages_by_their_first_bytes(tmp_path):
    import onnx
    from onnx import helper

    model = default_model()
    long_output = "o" * 1_000_000
    long_input = "i" * 1_000_000

    def add_output(package):
        graph = package.graph
        graph.node.append(helper.make_node("Identity", ["head_output"], [long_output]))
        head = next(o for o in graph.output if o.name == "head_output")
        extra = onnx.ValueInfoProto()
        extra.CopyFrom(head)
        extra.name = long_output
        graph.output.append(extra)

    def rename_input(package):
        graph = package.graph
        old = graph.input[0].name
        graph.input[0].name = long_input
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = long_input

    def rename_uncertainty(package):  # the declared "uncertainty" missing, the graph's names listed
        graph = package.graph
        for node in graph.node:
            for names in (node.input, node.output):
                for k, name in enumerate(names):
                    if name == "uncertainty":
                        names[k] = long_output
        next(o for o in graph.output if o.name == "uncertainty").name = long_output

    def many_outputs(package):  # 3,000 more outputs, "uncertainty" renamed: the list is cut
        rename_uncertainty(package)
        graph = package.graph
        head = next(o for o in graph.output if o.name == "head_output")
        for k in range(3000):
            graph.node.append(helper.make_node("Identity", ["head_output"], [f"copy{k}"]))
            extra = onnx.ValueInfoProto()
            extra.CopyFrom(head)
            extra.name = f"copy{k}"
            graph.output.append(extra)

    packages = [_graph_edited(tmp_path, model, add_output, "extra_output"),
                _graph_edited(tmp_path, model, rename_input, "long_input"),
                _graph_edited(tmp_path, model, rename_uncertainty, "renamed_output"),
                _graph_edited(tmp_path, model, many_outputs, "many_outputs")]
    program = compile_host(tmp_path, "message_lengths", MESSAGE_LENGTHS)
    lines = run_host(program, *packages, timeout=300)
    # Before: the whole name in each message, 1,000,100 bytes and more, for a name the host never gave.
    expected = ['the graph has output "' + "o" * 200 + '"... (1000000 bytes), which metadata "dodo.outputs" does not declare',
                'model input is named "' + "i" * 200 + '"... (1000000 bytes); the contract says "invariants"',
                'declares output "uncertainty", which the graph does not have (graph outputs: "head_output", "'
                + "o" * 200 + '"... (1000000 bytes)',
                '(graph outputs: "head_output", "' + "o" * 200 + '"... (1000000 bytes), "log_growth_ratio", "copy0", "copy1", ']
    for line, what in zip(lines, expected, strict=True):
        status, length, message = line.split(" ", 2)
        assert status == "3", line  # DODO_ERROR_MODEL_FORMAT
        assert int(length) < 2000 and what in message, line[:600]
    # (before: all 3,003 names, 1,035,061 bytes; now the first kilobyte of them and the count)
    assert lines[3].endswith(", ... (3003 outputs))"), lines[3][-200:]


@needs_runtime
def test_a_tensor_name_cut_for_a_message_is_cut_between_characters(tmp_path):
    import json

    import numpy as np
    import onnx

    model = default_model()
    description = json.loads(next(e.value for e in onnx.load(model).metadata_props if e.key == "dodo.native_network"))
    halved = float(np.float32(description["sigma_floor"]) * np.float32(0.5))
    name = "x" + "\u00e9" * 40  # the quote and "x", then two-byte characters: byte 57 is inside one

    def by_name(d):
        d["sigma_floor"] = name

    package = resigned_description(tmp_path, model, by_name, "named", extra_scalar=(name, halved))
    program = compile_host(tmp_path, "load_packages", LOAD_PACKAGES)
    lines = run_host(program, package, timeout=300)
    # Before: cut at byte 57, inside an e-acute: the message held a lone lead byte, escaped as
    # "\xc3" (a character the name does not have).
    assert lines[0].startswith("4 model file "), lines
    assert 'gives sigma_floor "x' + "\u00e9" * 29 + '... (83 bytes), which is not a constant of the graph' in lines[0], lines
    assert "\\xc3" not in lines[0], lines


@needs_runtime
def test_tensor_names_of_megabytes_in_the_network_description_are_quoted_by_their_first_bytes(tmp_path):
    import numpy as np
    from onnx import numpy_helper

    model = default_model()
    long_name = "q" * 1_000_000

    def package(name, edit_graph, edit_description):
        return resigned_description(tmp_path, model, edit_description, name, edit_graph=edit_graph)

    def rename_r_scale(graph):  # the key's own node, renamed "qqq....r_scale"
        next(t for t in graph.initializer if t.name == "ensemble.r_scale").name = long_name + ".r_scale"
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == "ensemble.r_scale":
                    node.input[k] = long_name + ".r_scale"

    def edit_r_scale(description):
        description["r_scale"] = description["r_scale"] * 1.0005

    def add_vector(graph):
        graph.initializer.append(numpy_helper.from_array(np.array([1.0, 2.0], np.float32), long_name))

    def r_scale_by_name(description):
        description["r_scale"] = long_name

    def first_weight_by_name(description):
        description["layers"][0][0] = long_name

    packages = [package("renamed_node", rename_r_scale, edit_r_scale), package("vector_named", add_vector, r_scale_by_name),
                package("weight_named", add_vector, first_weight_by_name)]
    program = compile_host(tmp_path, "message_lengths", MESSAGE_LENGTHS)
    lines = run_host(program, *packages, timeout=300)
    # Before: the whole name, 1,000,008 or 1,000,000 bytes, in each message.
    expected = ['gives r_scale 0.0195915', ', but the graph\'s "' + "q" * 200 + '"... (1000008 bytes) holds 0.0195817']
    status, length, message = lines[0].split(" ", 2)
    assert status == "4" and int(length) < 1000 and all(part in message for part in expected), lines[0][:600]
    status, length, message = lines[1].split(" ", 2)
    assert status == "4" and int(length) < 1000, lines[1][:600]
    assert 'metadata "dodo.native_network" tensor "' + "q" * 200 + '"... (1000000 bytes) must be a scalar' in message, \
        lines[1][:600]
    status, length, message = lines[2].split(" ", 2)
    assert status == "4" and int(length) < 1000, lines[2][:600]
    assert 'metadata "dodo.native_network" layer weight "' + "q" * 200 + '"... (1000000 bytes) must have shape [outputs, ' \
        in message, lines[2][:600]


@needs_runtime
def test_two_initializers_of_one_name_are_refused(tmp_path):
    import json

    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = default_model()
    description = json.loads(next(e.value for e in onnx.load(model).metadata_props if e.key == "dodo.native_network"))
    weight = description["layers"][0][0]

    def copy_of_the_first_weight(where):
        def edit(package):
            original = next(t for t in package.graph.initializer if t.name == weight)
            copy = numpy_helper.from_array((numpy_helper.to_array(original) * np.float32(1.0001)).astype(np.float32), weight)
            if where == "after":
                package.graph.initializer.append(copy)
            else:
                package.graph.initializer.insert(0, copy)
        return edit

    packages = [_graph_edited(tmp_path, model, copy_of_the_first_weight("after"), "copy_after"),
                _graph_edited(tmp_path, model, copy_of_the_first_weight("before"), "copy_before")]
    program = compile_host(tmp_path, "load_packages", LOAD_PACKAGES)
    lines = run_host(program, *packages, timeout=300)
    # Before: both loaded (status 0). The native network read the last copy, ONNX Runtime computed
    # with the other: with the copy appended, the native results moved by up to 8.7e-5 (1,999 of
    # 2,000 random cells) while DODO_NETWORK_EVALUATOR=onnxruntime gave the clean model's bit for
    # bit, both within the load-time comparison's 1e-3.
    for line in lines:
        assert line.startswith("3 model file "), line  # DODO_ERROR_MODEL_FORMAT
        assert f'the graph has two initializers named "{weight}" (ONNX wants each name once; edited after export?)' in line, line
    assert len(lines) == 2, lines


FLOATING_POINT_HOST = r"""
#define _GNU_SOURCE
#include <dodo/dodo.h>
#include <fenv.h>
#include <stdio.h>
#include <string.h>

#define N 300
static double F[N][6][4], P[N][6][4], Q[N][6][4];

static void fill(void) {
  for (int c = 0; c < N; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = c % 50 == 7 ? 0.0 : 1 + 0.1 * a + 0.003 * c;  /* some vacuum cells (rejected) */
      F[c][a][1] = 0.01 * ((c * 7 + a) % 11 - 5);
      F[c][a][2] = 0.0;
      F[c][a][3] = c % 50 == 7 ? 0.0 : (a == 3 ? -0.4 : 0.3) * (c % 3 ? 1 : 0.5);
    }
}

/* argv[1]: the model; argv[2]: "trap" (invalid, divide-by-zero and overflow trapping, a host flag
   of its own raised) or "upward" (the host rounds upward). */
int main(int argc, char** argv) {
  (void)argc;
  fill();
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 2;
  options.chunk_size = 64;
  dodo_closure* reference = NULL;
  if (dodo_closure_create(argv[1], &options, &reference, NULL, 0)) return 2;
  if (dodo_apply(reference, N, &F[0][0][0], NULL, NULL, NULL, &Q[0][0][0], NULL, NULL)) return 3;
  dodo_closure_destroy(reference);
  const int trap = strcmp(argv[2], "trap") == 0;
  if (trap) {
    feenableexcept(FE_INVALID | FE_DIVBYZERO | FE_OVERFLOW);
    feraiseexcept(FE_UNDERFLOW); /* the host's own flag, not trapping */
  } else {
    fesetround(FE_UPWARD);
  }
  char message[512] = "";
  for (int threads = 0; threads <= 2; threads += 2) {
    options.threads = threads;
    dodo_closure* model = NULL;
    dodo_closure* box3d = NULL;
    int created = dodo_closure_create(argv[1], &options, &model, message, sizeof message);
    printf("create %d %s\n", created, message);
    if (created) continue;
    dodo_closure_create(DODO_BOX3D_ONLY, &options, &box3d, NULL, 0);
    double worst = -1;
    int box = dodo_apply(box3d, N, &F[0][0][0], NULL, NULL, NULL, &P[0][0][0], NULL, NULL);
    int tested = dodo_self_test(model, &worst);
    int applied = dodo_apply(model, N, &F[0][0][0], NULL, NULL, NULL, &P[0][0][0], NULL, NULL);
    printf("threads %d: box3d %d self-test %d apply %d same %d\n", threads, box, tested, applied,
           memcmp(P, Q, sizeof P) == 0);
    dodo_closure_destroy(box3d);
    dodo_closure_destroy(model);
  }
  int flags = fetestexcept(FE_ALL_EXCEPT & ~FE_INEXACT);
  printf("host flags %s, traps %s, rounding %s\n", flags == (trap ? FE_UNDERFLOW : 0) ? "as they were" : "changed",
         fegetexcept() == (trap ? (FE_INVALID | FE_DIVBYZERO | FE_OVERFLOW) : 0) ? "as they were" : "changed",
         fegetround() == (trap ? FE_TONEAREST : FE_UPWARD) ? "as it was" : "changed");
  return 0;
}
"""


@needs_runtime
def test_a_host_trapping_floating_point_exceptions_or_rounding_upward_gets_the_same_closure(tmp_path):
    import subprocess

    program = compile_host(tmp_path, "floating_point", FLOATING_POINT_HOST)
    model = default_model()
    expected = ["create 0", "threads 0: box3d 0 self-test 0 apply 0 same 1", "create 0",
                "threads 2: box3d 0 self-test 0 apply 0 same 1", "host flags as they were, traps as they were, rounding as it was"]
    # Before, "trap": killed by SIGFPE in the first dodo_closure_create of the model (the invalid
    # and divide-by-zero flags are raised on ordinary cells), and in Box3D's dodo_apply alone.
    result = subprocess.run([str(program), model, "trap"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert [line.rstrip() for line in result.stdout.splitlines()] == expected, result.stdout
    # Before, "upward": the shipped model refused ('gives sigma_floor 9.9999997473787534e-06, which
    # is not a constant of the graph (edited after export?)'); results that differed by up to
    # 8e-7 from the default environment's, on 3,999 of 4,000 cells with threads 0 and on 1,312
    # with threads 2 (the workers keep the mode they were started with).
    assert run_host(program, model, "upward") == expected


@needs_runtime
def test_a_fortran_host_built_with_ffpe_trap_runs_the_closure(tmp_path):
    source = """
program trapping
  use dodo
  implicit none
  type(dodo_closure) :: closure
  real(c_double) :: F(4, 6, 40), F_pred(4, 6, 40)
  integer :: stat, c, a
  character(len=300) :: message
  do c = 1, 40
    do a = 1, 6
      F(:, a, c) = [1 + 0.1d0 * a + 0.01d0 * c, 0d0, 0d0, merge(-0.4d0, 0.3d0, a == 4)]
    end do
  end do
  F(:, :, 7) = 0  ! a vacuum cell, rejected
  message = ""
  call dodo_create(closure, dodo_default_model_path(), threads=2, stat=stat, errmsg=message)
  print '(a,i0,1x,a)', "create ", stat, trim(message)
  call dodo_apply(closure, F, F_pred, stat=stat, errmsg=message)
  print '(a,i0)', "apply ", stat
  call dodo_destroy(closure)
end program
"""
    from capi_host import compile_fortran

    default_model()
    # gfortran's -ffpe-trap=invalid,zero,overflow (a simulation code's debug build): before, the
    # program died of SIGFPE inside dodo_create ("Program received signal SIGFPE").
    program = compile_fortran(tmp_path, "trapping", source, "-ffpe-trap=invalid,zero,overflow")
    assert run_host(program) == ["create 0", "apply 0"]
