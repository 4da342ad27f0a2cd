"""Outside probe of the C, C++ and Fortran interfaces, round forty-seven (docs/reliability_cpp.md,
"C round forty-seven"), as the developer of a transport code: a dodo_options never initialised (or
initialised with the size of a pointer) told to rebuild against another dodo.h, the C++ example ended
in std::terminate where a host thread could not start, and dodo.h's stale words on dlclose."""
from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from capi_host import ROOT, compile_host, run_host
from native_build import REQUIRES_C_API

pytestmark = REQUIRES_C_API


# Each line: "struct_size|STATUS_NAME|message" for a Box3D-only create with these options.
OPTIONS = r"""
#include <dodo/dodo.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static void create(const dodo_options* options) {
  dodo_closure* closure = NULL;
  char message[1024] = "";
  dodo_status status = dodo_closure_create(DODO_BOX3D_ONLY, options, &closure, message, sizeof message);
  printf("%zu|%s|%s\n", options->struct_size, dodo_status_name(status), message);
  dodo_closure_destroy(closure);
}

/* A helper that takes the options by pointer and sizes them with sizeof of the pointer. */
static void setup(dodo_options* options) {
  dodo_options_init_sized(options, sizeof options);
  options->threads = 2;
}

int main(void) {
  dodo_options options;
  /* Never initialised: struct_size is what the memory held. The values a stack gives: an address,
   * a byte pattern, a small odd count; then two sizes a later dodo.h can have. */
  const size_t held[] = {(size_t)(uintptr_t)&options, (size_t)0x5a5a5a5a5a5a5a5aULL, 100, 72, 4096};
  for (size_t i = 0; i < sizeof held / sizeof held[0]; ++i) {
    memset(&options, 0x5a, sizeof options);
    options.threads = 2;
    options.struct_size = held[i];
    create(&options);
  }
  memset(&options, 0x5a, sizeof options);
  setup(&options);
  create(&options);
  return 0;
}
"""


@pytest.fixture(scope="module")
def options_lines(tmp_path_factory):
    program = compile_host(tmp_path_factory.mktemp("options"), "options", OPTIONS)
    return [line.split("|", 2) for line in run_host(program, timeout=120)]


@pytest.mark.parametrize("case", ["address", "pattern", "odd"])
def test_an_uninitialised_options_struct_is_not_blamed_on_a_newer_header(options_lines, case):
    """`dodo_options o; o.threads = 2; dodo_closure_create(..., &o, ...)` without dodo_options_init (the C
    programmer's usual slip): its struct_size is whatever the stack held, here 140727022835520 (an
    address). Before: "dodo_options.struct_size 140727022835520 is larger than this library's (64 bytes):
    the program was built against a newer dodo.h than this libdodo 0.1.0; build it against this
    library's dodo.h, ...", advice on a header that was right. Now a size no dodo.h can give (above 4096
    bytes, or not a multiple of the struct's alignment) asks whether the struct was initialised."""
    size, name, message = options_lines[["address", "pattern", "odd"].index(case)]
    assert name == "DODO_ERROR_INVALID_ARGUMENT", (size, name, message)
    assert message.startswith(f"dodo_options.struct_size {size} is larger than this library's ("), message
    assert "newer dodo.h than this libdodo" not in message, message
    assert "was the struct initialised? Call dodo_options_init(&options) before setting its fields" in message, message


def test_a_later_headers_options_still_say_the_header_is_newer(options_lines):
    """Guard: sizes a later dodo.h can have (72, 4096 bytes) keep round thirteen's words."""
    for size, name, message in options_lines[3:5]:
        assert name == "DODO_ERROR_INVALID_ARGUMENT", (size, name, message)
        assert "the program was built against a newer dodo.h than this libdodo" in message, message


def test_options_sized_by_a_pointer_are_asked_whether_initialised(options_lines):
    """`dodo_options_init_sized(options, sizeof options)` in a helper that takes a `dodo_options*`:
    size 8, smaller than any dodo_options, so nothing is written (test_model_in_memory's contract), and
    the create read what the memory held (0x5a5a5a5a5a5a5a5a here). Before: "is larger than this library's
    ...: the program was built against a newer dodo.h". Now the create asks whether the struct was
    initialised and names dodo_options_init, which takes the size itself."""
    size, name, message = options_lines[5]
    assert size == str(0x5a5a5a5a5a5a5a5a), options_lines[5]
    assert name == "DODO_ERROR_INVALID_ARGUMENT", options_lines[5]
    assert "newer dodo.h than this libdodo" not in message, message
    assert "was the struct initialised? Call dodo_options_init(&options) before setting its fields" in message, message


def _thread_stacks_do_not_fit():
    # glibc sizes a new thread's stack from RLIMIT_STACK: 3 GB each, under an address space of 2.5 GB
    resource.setrlimit(resource.RLIMIT_STACK, (3_000_000 * 1024, 3_000_000 * 1024))
    resource.setrlimit(resource.RLIMIT_AS, (2_500_000 * 1024, 2_500_000 * 1024))


def test_the_cpp_example_runs_where_its_host_threads_cannot_start(tmp_path):
    """examples/cpp/grid_closure.cpp started its four host threads with std::thread, outside any catch
    of std::system_error: where the system refused a thread (a thread or process limit; here each
    thread's stack, sized by `ulimit -s`, beyond `ulimit -v`) the example ended "terminate called after
    throwing an instance of 'std::system_error' what(): Resource temporarily unavailable", SIGABRT. Now
    a slab whose thread cannot start runs on the main thread, and the example ends 0 with every cell."""
    from test_native_programs import pkg_config, run

    program = tmp_path / "grid_closure_cpp"
    run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}",
         str(ROOT / "examples/cpp/grid_closure.cpp"), *pkg_config("--cflags", "--libs"), "-pthread", "-o",
         str(program)])
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120,
                            preexec_fn=_thread_stacks_do_not_fit)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "host thread 0 not started (" in result.stderr, result.stderr
    assert "4608 cells from 0 host threads and the main thread, Box3D only" in result.stdout, result.stdout


def test_dodo_h_says_libdodo_stays_loaded_after_dlclose():
    """dodo.h said glibc unloads libdodo at dlclose once no thread that called it lives ("a later dlopen
    loads it afresh ... destroy every handle before dlclose"); since round forty-three libdodo defines a
    GNU unique symbol and stays loaded (docs/runtime.md, held by test_probe_c_round43's
    test_libdodo_stays_loaded_after_dlclose). The header now says what the library does."""
    header = (ROOT / "cpp/include/dodo/dodo.h").read_text()
    assert "unloads it otherwise" not in header
    assert "libdodo stays loaded after dlclose" in header


def _cmake():
    import shutil
    import sys

    found = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    if not Path(found).exists():
        pytest.skip("needs cmake")
    return found


def _configure(cmake: str, source, build, *definitions: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DODO_BUILD_RUNTIME", "CMAKE_BUILD_TYPE")}
    return subprocess.run([cmake, "-S", str(source), "-B", str(build), *definitions], capture_output=True, text=True,
                          env=env, timeout=300)


FIND_FORTRAN_COMPONENT = """
cmake_minimum_required(VERSION 3.18)
project(host C {languages})
find_package(Dodo 0.1 CONFIG REQUIRED COMPONENTS {components})
if(TARGET Dodo::fortran)
  message(STATUS "Dodo::fortran made")
endif()
"""


@pytest.mark.parametrize("case", ["fortran", "Fortran"])
def test_find_package_with_the_fortran_component_finds_it(tmp_path, case):
    """`find_package(Dodo CONFIG REQUIRED COMPONENTS fortran)` in a project that enabled Fortran, the way a
    CMake user asks for a package's Fortran target: DodoConfig.cmake made Dodo::fortran but set no
    Dodo_fortran_FOUND, so check_required_components failed it, and CMake said only "it set Dodo_FOUND to
    FALSE so package "Dodo" is considered to be NOT FOUND", no reason. Now the component is found."""
    import shutil

    from test_native_programs import PATHS

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    cmake = _cmake()
    (tmp_path / "CMakeLists.txt").write_text(FIND_FORTRAN_COMPONENT.format(languages="Fortran", components=case))
    result = _configure(cmake, tmp_path, tmp_path / "build", f"-DDodo_DIR={PATHS['cmake_dir']}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Dodo::fortran made" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("languages, component, reason", [
    ("", "fortran", "Dodo's component fortran (target Dodo::fortran) needs Fortran enabled before find_package(Dodo)"),
    ("CXX", "python", 'Dodo has no component "python": its one component is fortran'),
])
def test_find_package_says_why_a_component_is_refused(tmp_path, languages, component, reason):
    """A component that cannot be given (fortran where the project enabled no Fortran; one Dodo does
    not have) fails find_package with its reason, where CMake said only "it set Dodo_FOUND to FALSE"."""
    from test_native_programs import PATHS

    cmake = _cmake()
    (tmp_path / "CMakeLists.txt").write_text(FIND_FORTRAN_COMPONENT.format(languages=languages, components=component))
    result = _configure(cmake, tmp_path, tmp_path / "build", f"-DDodo_DIR={PATHS['cmake_dir']}")
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Reason given by package:" in result.stderr, result.stderr[-3000:]
    assert reason in " ".join(result.stderr.split()), result.stderr[-3000:]


DODO_AS_A_SUBPROJECT = """
cmake_minimum_required(VERSION 3.18)
project(host C)
add_subdirectory("{root}" dodo EXCLUDE_FROM_ALL)
add_executable(app app.c)
target_link_libraries(app PRIVATE Dodo::dodo)
"""


def test_dodo_as_a_subproject_leaves_the_hosts_build_type_alone(tmp_path):
    """A host that vendors Dodo (`add_subdirectory(dodo)`, FetchContent) and leaves its build type
    empty: Dodo's CMakeLists.txt set the cache's CMAKE_BUILD_TYPE to Release, FORCE, so every source of
    the host was compiled `-O3 -DNDEBUG`, its assert()s gone. Now Release holds in Dodo's directories
    alone; the host's sources keep their flags and the cache its empty build type."""
    import json

    cmake = _cmake()
    (tmp_path / "CMakeLists.txt").write_text(DODO_AS_A_SUBPROJECT.format(root=ROOT.as_posix()))
    (tmp_path / "app.c").write_text("#include <dodo/dodo.h>\nint main(void) { return dodo_api_version() != 1; }\n")
    build = tmp_path / "build"
    result = _configure(cmake, tmp_path, build, "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON")
    if result.returncode != 0 and "onnxruntime_c_api.h" in result.stderr:
        pytest.skip("ONNX Runtime's header is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    cache = (build / "CMakeCache.txt").read_text()
    assert "\nCMAKE_BUILD_TYPE:STRING=\n" in cache, [line for line in cache.splitlines() if "BUILD_TYPE" in line]
    commands = {Path(entry["file"]).name: entry["command"] for entry in json.loads((build / "compile_commands.json").read_text())}
    assert "-DNDEBUG" not in commands["app.c"] and "-O3" not in commands["app.c"], commands["app.c"]
    assert "-O3 -DNDEBUG" in commands["capi.cpp"], commands["capi.cpp"]  # Dodo itself still Release


def _long_model_path(tmp_path) -> Path:
    """A link to the default model at a path of more than 1,100 characters (five directories of 220),
    as a deep scratch directory or a generated run directory gives."""
    from capi_host import default_model

    directory = tmp_path
    for letter in "abcde":
        directory = directory / (letter * 220)
    directory.mkdir(parents=True)
    link = directory / "model.onnx"
    link.symlink_to(default_model())
    assert len(str(link)) > 1100
    return link


@pytest.mark.parametrize("example", ["grid", "mpi"])
def test_the_fortran_examples_read_a_long_model_path_whole(tmp_path, example):
    """examples/fortran/grid_closure.f90 read its argument into `character(len=512) :: model`,
    mpi_closure.f90 into `character(len=1024)`: a longer path was cut, silently, and the example refused
    a model that exists as 'model file ".../bbb...b" does not exist' (the MPI example: 'cannot read the
    model package'). Each now reads the argument at its own length and runs."""
    from test_native_programs import pkg_config, run

    model = _long_model_path(tmp_path)
    if example == "grid":
        import shutil

        if not shutil.which("gfortran"):
            pytest.skip("gfortran is not installed")
        program = tmp_path / "grid_closure_f"
        include_dir = pkg_config("--variable=includedir")[0]
        run(["gfortran", "-std=f2018", "-Wall", "-J", str(tmp_path), f"{include_dir}/dodo/dodo.f90",
             str(ROOT / "examples/fortran/grid_closure.f90"), *pkg_config("--libs"), "-o", str(program)])
        result = subprocess.run([str(program), str(model)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (result.stdout, result.stderr[-1500:])
        assert "864 cells, rejected 0" in result.stdout, result.stdout
    else:
        from test_mpi_examples import build, launch

        result = launch(build(tmp_path, "fortran"), model)
        assert result.returncode == 0, (result.stdout[-1500:], result.stderr[-1500:])
        assert "2 ranks (model of " in result.stdout and "4096 cells" in result.stdout, result.stdout


@pytest.mark.parametrize("language", ["c", "fortran"])
@pytest.mark.parametrize("gib", [0.3, 3])
def test_the_mpi_examples_refuse_a_file_larger_than_any_package_unread(tmp_path, language, gib):
    """A data file given to the MPI examples as the model (sparse files of 300 MB and 3 GiB here): rank 0
    read one of 300 MB whole and broadcast it, every rank allocated it, and then each refused it ("model
    in memory (314572800 bytes) is larger than a model package may be"): at 128 ranks a node, 38 GB for
    nothing; one above 2 GiB was "cannot read the model package ... (missing, empty, unreadable or not a
    regular file)", none of which it was. Rank 0 now refuses a file above DODO_MAX_MODEL_FILE_BYTES
    before reading it, naming its size and the bound (the Fortran module gains the constant)."""
    from test_mpi_examples import build, launch

    data = tmp_path / "emu_database.h5"
    size = int(gib * (1 << 30))
    with open(data, "wb") as handle:
        handle.truncate(size)
    result = launch(build(tmp_path, language), data)
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-2000:]
    assert (f'model file "{data}" is {size} bytes; a model package is at most 268435456 bytes '
            "(DODO_MAX_MODEL_FILE_BYTES)") in text, text[-2000:]
    assert "model in memory" not in text and "missing, empty" not in text, text[-2000:]


DODO_AS_A_FORTRAN_SUBPROJECT = """
cmake_minimum_required(VERSION 3.18)
project(host C Fortran)
add_subdirectory("{root}" dodo EXCLUDE_FROM_ALL)
add_executable(app app.f90)
target_link_libraries(app PRIVATE Dodo::fortran)
"""


def test_dodo_as_a_subproject_of_a_fortran_host_gives_dodo_fortran(tmp_path):
    """A Fortran host that vendors Dodo (`add_subdirectory(dodo)`) and links Dodo::fortran, as
    find_package(Dodo) hosts do: only Dodo::dodo was made there, and generation stopped with 'Target "app"
    links to target "Dodo::fortran" but the target was not found'. Now the module is made as
    DodoConfig.cmake makes it (configure and generate only: building libdodo here takes minutes; built
    by hand in the round's record)."""
    import shutil

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    cmake = _cmake()
    (tmp_path / "CMakeLists.txt").write_text(DODO_AS_A_FORTRAN_SUBPROJECT.format(root=ROOT.as_posix()))
    (tmp_path / "app.f90").write_text('program app\n  use dodo\n  print "(a)", dodo_version_string()\nend program\n')
    result = _configure(cmake, tmp_path, tmp_path / "build")
    if result.returncode != 0 and "onnxruntime_c_api.h" in result.stderr:
        pytest.skip("ONNX Runtime's header is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dodo::fortran" not in result.stderr, result.stderr[-3000:]
