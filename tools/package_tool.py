"""What the tools that edit a model package without retraining share: their arguments, the checks
before any work (the input a readable package that loads with its self-test; the output not the
input, and where a file is there, a model package, which is replaced, unless --overwrite), and the
atomic write. Used by tools/gate_distance_float64.py, tools/probe_test_vectors.py and
tools/gate_growth_in_package.py and tools/scale_correction_in_package.py (run as `python tools/NAME.py`, which puts this folder on the
module path)."""
from __future__ import annotations

import argparse


def package_tool_arguments(description: str, more=None) -> argparse.Namespace:
    """The tools' common arguments; more(parser), when given, adds a tool's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("package", help="a model package (.onnx) of dodo train-ensemble / dodo export")
    parser.add_argument("-o", "--output", required=True, help="the new package")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model package at OUTPUT")
    if more is not None:
        more(parser)
    return parser.parse_args()


def package_to_edit(args: argparse.Namespace, tool: str) -> bytes:
    """The input package's bytes, after the checks; OSError, ValueError or RuntimeError otherwise."""
    import dodo
    from dodo._atomic import check_input_file, check_outputs
    from dodo._output_guard import MODEL_PACKAGE, refuse_replacing

    check_input_file(args.package, "a model package (.onnx)")
    check_outputs([args.output], [args.package])
    refuse_replacing(args.output, MODEL_PACKAGE, tool, args.overwrite)
    with open(args.package, "rb") as handle:
        package = handle.read()
    dodo.Closure(package, threads=1)  # the package as it is must load (its digests, its self-test)
    return package


def reexported(package: str, output: str, ensemble, record: dict) -> bytes:
    """The bytes of `ensemble` exported by `dodo export`'s exporter with `record` (a checkpoint's data
    and metrics), made in a directory of this run's own beside `output` and removed again: its test
    vectors and probes are drawn afresh. The scratch file was `OUTPUT.reexport-tmp.onnx`, a fixed name:
    a user's file of that name was overwritten and deleted without a word (through a symbolic link of
    that name, its target was replaced), and two runs writing one output removed each other's
    (outside probe, data-loss round sixteen)."""
    import contextlib
    import os
    import shutil
    import tempfile

    from dodo._atomic import _host, _running
    from dodo.training.ensemble_train import export_ensemble
    from dodo.training.member_processes import _folder_in_use, _hold_folder

    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)  # as the exporter's own write makes a missing one
    # Named by host and pid: a run killed meanwhile (SIGTERM, SIGKILL) cannot remove its own; the next run
    # on this output removes those of runs on this host that no longer run, holding only the scratch file. A run
    # holds its directory with a shared flock, which keeps it where the pid cannot tell (another pid namespace).
    prefix = f".{os.path.basename(output)[:180]}.reexport-{_host()}."
    for name in os.listdir(directory):
        pid, left = name[len(prefix):].split(".", 1)[0], os.path.join(directory, name)
        if name.startswith(prefix) and pid.isdecimal() and not _running(int(pid)) and not os.path.islink(left) \
                and not _folder_in_use(left):
            with contextlib.suppress(OSError):
                for inside in os.listdir(left):
                    if inside == "package.onnx" or inside.startswith(".package.onnx."):  # and the writer's temporary
                        os.unlink(os.path.join(left, inside))
                os.rmdir(left)  # refused unless empty
    scratch_dir = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", dir=directory)
    held = _hold_folder(scratch_dir)
    try:
        scratch = os.path.join(scratch_dir, "package.onnx")
        export_ensemble(package, scratch, checkpoint=record, ensemble=ensemble,
                        log=lambda line: None if line.startswith("wrote ") else print(line))
        with open(scratch, "rb") as handle:
            return handle.read()
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
        if held is not None:
            os.close(held)


def run_package_tool(main, tool: str) -> int:
    """A tool's main() as dodo's commands run theirs: the output is compared at its rename with what the
    check before the work found there, so a package another process wrote meanwhile is kept (two runs to
    one new -o at once: the second replaced the first's package without --overwrite, and both said "wrote",
    exit 0; outside probe, data-loss round sixteen); a write refused then is one line, exit 2."""
    import sys

    from dodo._atomic import outputs_as_found

    try:
        with outputs_as_found():
            return main()
    except (OSError, ValueError) as error:
        print(f"{tool}: {error}", file=sys.stderr)
        return 2


def write_package(path: str, package: bytes) -> None:
    from dodo._atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(package)
