"""The in-loop closure from Python: Box3D plus the learned correction, on the C++ runtime.

``dodo.closure(F_init, u)`` for one-off use, ``dodo.Closure(model, threads=...)`` for repeated
calls. The work happens in C++ (dodo._core.Closure, the same code as the C API) with the GIL
released. Nothing here imports torch; ONNX Runtime's library is loaded by the C++ runtime.
"""
from __future__ import annotations

import errno
import functools
import glob
import importlib.util
import io
import mmap
import os
import re
import shlex
import stat
import sys
import sysconfig
import threading
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np

from . import _core
from ._box3d import _ForkHold, _claim, _compared_as_results, _document_fields, _empty_result, _fed_back_hint, _flat_outputs, _reduce_result, _integral, _prepare, _real, _shown_number, _text, _threads, _usable_cpus
from .conventions import N_COMPONENTS, N_SPECIES
from .models import default_model_path
from ._hints import Float64Array, Integer, Real, RealArrayLike, explain_type_names

PathLike = Union[str, os.PathLike]

#: Model argument meaning "no model": the closure is Box3D alone.
BOX3D_ONLY = "box3d"
#: Model arguments that hold a package's contents rather than name a file (bytes are never a path).
IN_MEMORY_PACKAGE = (bytes, bytearray, memoryview, np.ndarray)


def _is_in_memory_package(model) -> bool:
    """Whether ``model`` holds a package's contents: one of IN_MEMORY_PACKAGE, or any other object
    exposing the buffer protocol (read as bytes, as its memoryview is). A read-only ``mmap.mmap`` of a
    package was refused ("got mmap") though ``memoryview`` of the same mmap was taken (outside probe,
    Python round fifty-five). A path (str or os.PathLike) is never one."""
    if isinstance(model, IN_MEMORY_PACKAGE):
        return True
    if model is None or isinstance(model, (str, os.PathLike, np.generic)):  # a numpy scalar: no package's bytes
        return False
    try:
        memoryview(model).release()
    except TypeError:
        return False
    except ValueError:  # a buffer that cannot be read now (a closed mmap): _package_bytes says so
        return True
    return True


@_compared_as_results
class ClosureResult(NamedTuple):
    """One closure evaluation; every array has the batch shape of the input.

    The growth rate is the model's (Box3D's proxy times exp(log_growth_ratio)) where the model
    has a ``log_growth_ratio`` output and corrected the cell, else the proxy; 0 for stable and
    rejected cells. ``uncertainty`` is 0 where no correction is applied (docs/runtime.md).
    """

    # status (uint32) hinted as an array of any dtype: a result made of another's slices,
    # ClosureResult(*(array[a:b] for array in result)) as for out= in blocks, then passes a type check.
    F_pred: Float64Array
    status: np.ndarray
    growth_over_ntot: Float64Array
    growth_rate: Float64Array
    growth_rate_proxy: Float64Array
    uncertainty: Float64Array

    @classmethod
    def empty(cls, batch_shape: Union[Integer, tuple[Integer, ...]] = ()) -> ClosureResult:
        """Unfilled arrays for ``Closure.apply(..., out=)`` on cells of batch shape ``batch_shape``
        (F_init's shape without its trailing (6, 4))."""
        return _empty_result(cls, _CLOSURE_OUTPUTS, batch_shape)

    def __reduce_ex__(self, protocol):
        # A result made before an importlib.reload of this module pickles as the class defined now.
        return _reduce_result(self, ClosureResult, protocol)


_document_fields(ClosureResult, {
    "F_pred": "(..., 6, 4) float64 predicted asymptotic four-fluxes, lab frame",
    "status": "(...) uint32 bits of dodo.CellStatus (dodo.describe_status(status[i]) names them)",
    "growth_over_ntot": "(...) growth rate in units of N_tot",
    "growth_rate": "(...) growth rate in s^-1 for densities in cm^-3 (comoving frame)",
    "growth_rate_proxy": "(...) Box3D's proxy alone, s^-1 (comoving frame)",
    "uncertainty": "(...) the model's spread of its correction, units of N_tot"})


# Per output: (trailing shape after the batch shape, dtype), in ClosureResult's order.
_CLOSURE_OUTPUTS = {"F_pred": ((N_SPECIES, N_COMPONENTS), np.float64), "status": ((), np.uint32),
                    "growth_over_ntot": ((), np.float64), "growth_rate": ((), np.float64),
                    "growth_rate_proxy": ((), np.float64), "uncertainty": ((), np.float64)}


def _escaped(text: str) -> str:
    """``text`` for a quoted value in a message: control characters as \\xNN, as the runtime quotes
    the values a host gives (errors.hpp, printable_message): `device="cpu\\n"` read from a file broke
    the message inside the quotes (outside probe, C round twenty-nine)."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def runtime_available() -> bool:
    """True when this build of dodo includes the closure runtime (ONNX Runtime headers found)."""
    return hasattr(_core, "Closure")


def onnxruntime_library_path() -> Optional[str]:
    """libonnxruntime inside the installed ``onnxruntime`` wheel, found without importing it."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.origin:
        return None
    candidates = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "capi", "libonnxruntime.so*")))
    return candidates[-1] if candidates else None


def _installed_root() -> Path:
    """The installed package directory holding include/ and lib/ (the source tree's dodo/ in an
    editable install has neither; the wheel's files then live in site-packages/dodo)."""
    here = Path(__file__).resolve().parent
    candidates = [here] + [Path(p) / "dodo" for p in (sysconfig.get_paths()["platlib"], sysconfig.get_paths()["purelib"])]
    for root in candidates:
        if (root / "lib" / "cmake" / "Dodo").is_dir():
            return root
    return here


def runtime_paths() -> dict:
    """Directories of the C API inside the installed package, for CMake and pkg-config users."""
    root = _installed_root()
    return {
        "include_dir": str(root / "include"),
        "lib_dir": str(root / "lib"),
        "cmake_dir": str(root / "lib" / "cmake" / "Dodo"),
        "pkgconfig_dir": str(root / "lib" / "pkgconfig"),
        "default_model": str(default_model_path()),
        "onnxruntime_library": onnxruntime_library_path() or "",
    }


def model_file(model) -> Optional[str]:
    """The file :class:`Closure` reads for the model argument ``model``: the default model's path
    for None, None for ``"box3d"`` and in-memory packages (no file), else the path itself.
    Commands pass it to check_outputs, so that the implicit default model is protected like one
    given by name."""
    if model is None:
        return str(default_model_path())
    if _is_in_memory_package(model) or (isinstance(model, str) and model == BOX3D_ONLY):
        return None
    return _path_text(model)


def _path_text(model) -> str:
    """The path a non-literal model argument names, as text. Only the string ``"box3d"`` means
    Box3D alone: ``Path("box3d")`` names a file, so it becomes ``"./box3d"`` (the runtime would
    take the bare text for the literal and silently drop the file's learned correction)."""
    try:
        path = os.fspath(model)
    except TypeError:  # os.fspath's own message names no argument
        raise TypeError("model must be a path (str or os.PathLike), a package's bytes, None (the default model) or "
                        f'"{BOX3D_ONLY}"; got {type(model).__name__}{_file_object_hint(model)}') from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.path.join(os.curdir, path) if path == BOX3D_ONLY and not isinstance(model, str) else path


def _file_object_hint(model) -> str:
    """What to pass instead of a file object given as the model: `dodo.Closure(open("m.onnx", "rb"))` and an
    `io.BytesIO` were refused by their type alone ("got BufferedReader"), with no word of what would do
    (outside probe, Python round fifty-six). Still refused: reading a stream here would consume it."""
    if not (hasattr(model, "read") or hasattr(model, "getbuffer")):
        return ""
    name = getattr(model, "name", None)
    # A zip or tar member's name is no path here, nor is a descriptor's number: named only where it is a file.
    path = f"its path ({name!r})" if isinstance(name, str) and os.path.isfile(name) else "the file's path"
    if isinstance(model, io.TextIOBase):  # its text is no package: open the file in binary mode
        if not isinstance(name, str):  # io.StringIO
            return " (a text stream: a package is binary; pass the package file's path or its bytes)"
        return f" (a text stream: a package is binary; pass {path}, or open the file with 'rb' and pass its .read())"
    if hasattr(model, "getbuffer") or hasattr(model, "getvalue"):  # io.BytesIO
        return " (an in-memory stream: pass its bytes, model.getvalue() or model.getbuffer())"
    return f" (a file object: pass {path}, or its bytes, model.read())"


# Leading bytes of files that users pass as a model by mistake: a torch checkpoint (a zip
# archive: `dodo train`'s best.pt, `dodo train-ensemble`'s ensemble.pt) and HDF5 data files.
_NOT_A_PACKAGE = (
    (b"PK\x03\x04", "is a PyTorch checkpoint (dodo train / dodo train-ensemble), not an ONNX model package: "
                     "export it first, dodo export {path} -o model.onnx, and give model.onnx"),
    (b"\x89HDF\r\n\x1a\n", "is an HDF5 file (a data file?), not an ONNX model package (dodo export writes one)"),
)


def _refuse_a_path_that_is_there(path: str) -> None:
    """The cause, where os.path.exists says False of a path that is there: a symbolic link to nothing
    (its target named), a loop of links, a directory on the way this user may not search. Each was
    "model package '...' does not exist", where `dodo apply --model` said "Too many levels of symbolic
    links" of the same loop (outside probe, Python round forty-eight)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                return
            raise FileNotFoundError(f"model package {path!r} is a symbolic link to {target!r}, which does not exist "
                                    "(a dangling link: the package was moved or deleted)") from None
    except OSError as error:  # ELOOP, EACCES, ENAMETOOLONG: the path is there, or cannot be looked up
        if isinstance(error, NotADirectoryError):
            return
        refusal = type(error)(f"model package {path!r} cannot be read: {error.strerror}")
        refusal.errno = error.errno
        raise refusal from None


class ModelPathIsADirectoryError(IsADirectoryError, FileNotFoundError):
    """A directory given as the model. An IsADirectoryError (errno EISDIR); also a FileNotFoundError,
    which the runtime raised for it before (outside probe, Python round forty-nine), so that code
    catching that still catches it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.EISDIR  # set here, so that a pickled copy (a worker's error) keeps it


def _refuse_a_directory(path: str) -> None:
    """The runtime's refusal of a directory (`dodo.Closure("run/")`, a training run's directory),
    raised here: from the binding it was a FileNotFoundError (errno None) of a path that is there, and
    it did not say which package the directory holds (outside probe, Python round forty-nine)."""
    raise ModelPathIsADirectoryError(f"DODO_ERROR_FILE: model path {_shown_path(path)} is a directory, not a model "
                                     f"file{directory_hint(path)}")


class ModelPathNotARegularFileError(FileNotFoundError):
    """A FIFO, a device or a socket given as the model. A FileNotFoundError (errno None), the type the
    runtime's refusal had (tests/python/test_probe_round26.py pins it), now saying which kind of file the
    path is: "not a regular file (a device, FIFO or socket)" did not say which, of a path that is there
    (outside probe, Python round fifty)."""


def _refuse_a_special_file(path: str) -> None:
    """The runtime's refusal of a path that is not a regular file (never opened: a FIFO would block),
    naming what it is and what a user meant by it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # gone meanwhile, or not to be looked at: the runtime says so
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    from ._atomic import _file_kind

    kind = _file_kind(mode)
    if os.path.realpath(path) == os.devnull:
        hint = (f'; for Box3D without a learned correction give "{BOX3D_ONLY}", for the default model None (on a '
                "command line: default)")
    elif stat.S_ISFIFO(mode):
        hint = ("; the package is read whole and checked before it is used, so a pipe (a shell's <(...), "
                "a FIFO) is not read: save the package to a file and give that file's path")
    else:
        hint = "; give the path of a model package file (dodo export writes one)"
    raise ModelPathNotARegularFileError(f"DODO_ERROR_FILE: model path {_shown_path(path)} is {kind}, not a regular "
                                        f"file{hint}")


def directory_hint(path: str) -> str:
    """What a directory given as the model holds ('; it holds one model package: give ...', a checkpoint
    to export), or ''."""
    from ._atomic import file_names_in

    names = sorted(file_names_in(path))
    packages = [name for name in names if name.endswith(".onnx")]
    checkpoints = [name for name in names if name.endswith(".pt")]
    if len(packages) == 1:
        return f"; it holds one model package: give {os.path.join(path, packages[0])!r}"
    if packages:
        shown = ", ".join(repr(name) for name in packages[:3]) + (", ..." if len(packages) > 3 else "")
        return f"; it holds {len(packages)} .onnx files ({shown}): give the path of one of them"
    if checkpoints:  # a `dodo train` run's directory: best.pt, last.pt, final.pt
        checkpoint = os.path.join(path, "best.pt" if "best.pt" in checkpoints else checkpoints[0])
        return (f"; it holds no model package but a PyTorch checkpoint ({checkpoint!r}): export it first, dodo export "
                f"{_shell_word(checkpoint)} -o model.onnx, and give model.onnx")
    return ""


def _refuse_known_non_packages(path: str) -> None:
    """One clear line for a checkpoint or data file given as the model, where the runtime would say
    "not an ONNX model (truncated or damaged file?)". Only regular files are read (a FIFO would
    block; the runtime refuses special files itself, naming them)."""
    try:
        if not os.path.isfile(path):
            return
        with open(path, "rb") as handle:
            head = handle.read(8)
            if not head.startswith((b"PK\x03\x04", b"\x08")):  # 0x08: an ONNX model's first byte, never second-guessed
                from ._output_guard import HDF5_SIGNATURE, _hdf5_after_user_block, compressed_kind, compressed_text

                if _hdf5_after_user_block(handle):  # HDF5 with a user block: its signature at byte 512, 1024, ...
                    head = HDF5_SIGNATURE
                else:
                    packed = compressed_kind(handle)
                    if packed is not None:
                        kind, command = packed
                        raise RuntimeError(
                            f"DODO_ERROR_MODEL_FORMAT: model file {path!r} is {compressed_text(kind)}, not an ONNX model package: "
                            f"unpack it first ({command} {_shell_word(path)}) and give the .onnx file it holds")
    except OSError:  # unreadable: the runtime reports it
        return
    if head.startswith(b"PK\x03\x04"):
        from ._output_guard import _is_other_zip

        if _is_other_zip(path):  # a NumPy .npz or any other zip was called a PyTorch checkpoint
            raise RuntimeError(f"DODO_ERROR_MODEL_FORMAT: model file {path!r} is a zip archive that is not a "
                               "checkpoint (a NumPy .npz, a .zip), not an ONNX model package (dodo export writes one)")
    for magic, problem in _NOT_A_PACKAGE:
        if head.startswith(magic):
            raise RuntimeError(f"DODO_ERROR_MODEL_FORMAT: model file {path!r} " + problem.format(path=_shell_word(path)))


def _shell_word(path: str) -> str:
    """``path`` as a shell word that names the file: shlex.quote of a UTF-8 name; a name of other bytes
    (a Latin-1 directory, which Python holds surrogate-escaped) in bash's $'...' quoting, its bytes past
    ASCII as \\xNN. shlex.quote kept the lone surrogates: the command in the message (`gunzip 't\udce9.onnx'`
    as bytes no UTF-8 text holds) could not be pasted, and writing the message to a UTF-8 log raised
    UnicodeEncodeError (outside probe, Python round sixty-three)."""
    if _is_utf8(path):
        return shlex.quote(path)
    return "$'" + "".join(chr(byte) if 32 <= byte < 127 and chr(byte) not in "'\\" else f"\\x{byte:02x}"
                          for byte in os.fsencode(path)) + "'"


#: How Python unpacks each format compressed_kind names, for an in-memory package.
_UNPACK_IN_PYTHON = {"gzip": "gzip.decompress(data)", "xz": "lzma.decompress(data)", "bzip2": "bz2.decompress(data)",
                     "zstd": "a zstd library's decompress", "tar": "tarfile: the .onnx member's bytes"}


def _refuse_compressed_bytes(data: bytes) -> None:
    """The in-memory form of _refuse_known_non_packages' compressed case: the bytes of a model.onnx.gz
    (read whole, or broadcast over MPI) were "not an ONNX model (truncated or damaged file?)"."""
    import io

    from ._output_guard import compressed_kind, compressed_text

    if data[:1] in (b"\x08", b""):  # an ONNX model's first byte, never second-guessed
        return
    packed = compressed_kind(io.BytesIO(data[:512]))
    if packed is not None:
        raise RuntimeError(f"DODO_ERROR_MODEL_FORMAT: model in memory ({len(data)} bytes) is {compressed_text(packed[0])}, not an ONNX model "
                           f"package: unpack it first ({_UNPACK_IN_PYTHON[packed[0]]}) and give the package's bytes")


_MEMORY_TEXT_ENDS = ((": give the bytes of the binary .onnx file dodo export writes (a path is given to dodo_closure_create, "
                      "dodo::Closure(path) or Fortran's dodo_create, not as the bytes)",
                      ": a package is the binary .onnx file dodo export writes"),
                     (": give the bytes of the binary .onnx file dodo export writes",
                      ": a package is the binary .onnx file dodo export writes"),
                     ("give the bytes of the .onnx file it holds", "give the .onnx file it holds"))


def _file_words(text: str, named: str) -> str:
    """``text``, the runtime's refusal of a model file that Python read (a name that is not UTF-8) and
    handed over as bytes, named ``named``, in the words the runtime gives a file: such a text file was
    "text, not an ONNX model package ...: give the bytes of the binary .onnx file dodo export writes",
    and one holding a path "(a path is given to dodo_closure_create ..., not as the bytes)", where a
    file of a UTF-8 name is "a text file, ...: a package is the binary .onnx file dodo export writes"
    (outside probe, Python round sixty-three)."""
    at = text.find(named)
    if at < 0:
        return text
    head, rest = text[:at + len(named)], text[at + len(named):]
    rest = re.sub(r"^: (empty )?text( \([^()]*\))?, not an ONNX model package",
                  lambda match: f": {'an empty text file' if match.group(1) else 'a text file'}{match.group(2) or ''}, "
                                "not an ONNX model package", rest, count=1)
    for memory, file in _MEMORY_TEXT_ENDS:
        rest = rest.replace(memory, file)
    return head + rest


#: DODO_MAX_MODEL_FILE_BYTES of dodo.h: the runtime refuses a larger package, on disk or in memory.
_MAX_MODEL_FILE_BYTES = 256 << 20


def _model_file_bytes_if_not_utf8(path: str) -> Optional[bytes]:
    """The content of the model file at ``path`` when its name is not UTF-8 (a Latin-1 name, which
    Python holds surrogate-escaped), None otherwise (the runtime reads the file itself). The runtime
    takes a path as UTF-8 text: such a name failed with pybind11's "Unable to cast Python instance of
    type <class 'str'> to C++ type '?'" (outside probe, round 26), so the file is read here and its
    bytes are loaded as a package in memory. Opened without blocking: a FIFO is refused, not waited on."""
    if _is_utf8(path):
        return None
    shown = _shown_path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except PermissionError as error:  # as the runtime raises it for a UTF-8 name
        raise PermissionError(error.errno, f"DODO_ERROR_FILE: cannot open model file {shown}: {error.strerror}") from None
    except OSError as error:
        raise FileNotFoundError(f"DODO_ERROR_FILE: cannot open model file {shown}: {error.strerror}") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):  # as the runtime says it (os.fdopen refuses a directory in its own words)
        os.close(descriptor)
        what = "is a directory, not a model file" if stat.S_ISDIR(mode) else \
            "is not a regular file (a device, FIFO or socket)"
        raise FileNotFoundError(f"DODO_ERROR_FILE: model path {shown} {what}")
    with os.fdopen(descriptor, "rb") as handle:
        if os.fstat(descriptor).st_size > _MAX_MODEL_FILE_BYTES:  # never read a large data file whole
            raise RuntimeError(f"DODO_ERROR_MODEL_FORMAT: model file {shown} is larger than a model package may be: "
                               f"at most {_MAX_MODEL_FILE_BYTES} bytes (DODO_MAX_MODEL_FILE_BYTES)")
        return handle.read(_MAX_MODEL_FILE_BYTES + 1)  # grown since: one byte over, the runtime names the bound


def _is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a file name of other bytes is held surrogate-escaped)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _shown_path(path: str) -> str:
    """``path`` quoted as the runtime quotes one, a byte that is not UTF-8 written as \\xNN."""
    return '"' + os.fsencode(path).decode("utf-8", "backslashreplace") + '"'


class Closure:
    """A loaded closure: Box3D, then the model's correction, per cell.

    model: path of an ONNX model package (``dodo export``); the package's bytes (``bytes``,
        ``bytearray``, ``memoryview``, a uint8 array or another buffer such as an ``mmap``, e.g.
        received by an MPI broadcast: the same checks as a file); None: the default model shipped with Dodo
        (``dodo/models/qke_default.onnx``, trained on the QKE solver's data); ``"box3d"``: no
        model, Box3D alone (the same literal in C, C++, Fortran and Julia; a file of that name is
        ``"./box3d"``). An empty path is refused.
    threads: worker threads per call (None: all cores this process may run on, i.e. its CPU
        affinity, and under an MPI launcher (mpirun, mpiexec) at most the node's cores divided by
        the ranks on the node; 0 or 1: the calling thread only; at most 1024). Workers beyond the CPUs this
        process may run on (but at least 64) are not started: each is made with its workspace at
        creation and could only wait for a core (``threads=1024`` took seconds on a small machine).
        If the system refuses to start some (thread or address-space limits), the closure runs
        with those it could start. ``threads`` (property) says how many run; results do not
        depend on it. ``OMP_NUM_THREADS`` and the other OpenMP variables are not read (Dodo's workers
        are its own threads, not OpenMP's): in a hybrid MPI + OpenMP code that sets them per rank,
        give the same count here, e.g. ``threads=int(os.environ.get("OMP_NUM_THREADS", 1))``.
    chunk_size: cells per network call (fixed-size chunks; default 1024, at most 2**20). Each worker
        holds a workspace of chunk_size cells, made (touched) when the closure is made: about 0.9 KB a
        cell for Box3D alone, 2.9 KB with the default model on the native evaluator, 8.2 KB on ONNX
        Runtime (measured 2026-12-06): chunk_size=2**20 costs 1 to 9 GB a worker, and with threads=16,
        up to 140 GB. The workspaces' own arrays are checked against the machine's memory (or the
        process's control-group limit) when the closure is made (DODO_ERROR_OUT_OF_MEMORY); ONNX
        Runtime's arena is not counted. Larger chunks are not faster
        (one thread: the same cells per second from 256 to 65,536 cells a chunk).
    lebedev_order, z_method, max_flux_factor: Box3D settings; None takes the model's, and a
        value that differs from the model's is refused (the model was trained against it).
    device: "cpu", or "cuda" / "cuda:N" (CUDA device N) with an onnxruntime-gpu installation
        (untested without a GPU); a library without the CUDA provider is refused with a RuntimeError.
    self_test: run the model's embedded test vectors once at load time.
    evaluator: "auto" (Dodo's own evaluator of the network where the package describes it,
        "dodo.native_network", and the device is the CPU; else ONNX Runtime) or "onnxruntime"
        (ONNX Runtime always). The two agree to float32 rounding; ``evaluator`` (property) says which runs.
    onnxruntime_library: path of libonnxruntime; None: $DODO_ONNXRUNTIME_LIBRARY, then the
        ``onnxruntime`` Python package, then the system.

    Instances are safe to share between threads (each call with its own ``out=``, if any). One call at a
    time has the workers: a call made while another runs (n threads of a
    ``concurrent.futures.ThreadPoolExecutor`` calling one closure) computes on its own thread alone, so n
    calling threads keep up to n + threads - 1 threads busy (measured: 4 callers of a ``threads=3``
    closure beside its 2 workers, no thread started), the same bits; with a pool of your own threads give
    ``threads=1`` (or make the pool
    smaller) rather than putting more threads than cores to work. They can be pickled (``multiprocessing``
    workers, ``concurrent.futures.ProcessPoolExecutor``): the pickle holds the model's identity
    and the options, not the loaded runtime, and unpickling loads the closure again: the same
    file (by absolute path), the default model, Box3D alone, or an in-memory package's bytes
    (carried in the pickle). A model file whose contents changed since the closure was made (the
    package's content or metadata digest differs), or that no longer loads, unpickles as an
    :class:`UnusableClosure`, whose every use raises the reason: a pool's task then fails in the
    parent with it, where a raise at unpickling lost the task and hung ``Pool.map``. Counters start at
    zero. A subclass comes back as itself with the attributes it added (its own ``__init__`` is not
    called again).
    """

    # model's hint: a path, or a package's bytes in a buffer (spelled out for help()). It named paths alone,
    # so mypy refused the documented Closure(data) (outside probe, Python round sixty-five).
    def __init__(self, model: Union[str, os.PathLike, bytes, bytearray, memoryview, mmap.mmap, np.ndarray, None] = None,
                 *, threads: Optional[Integer] = None, chunk_size: Integer = 1024,
                 lebedev_order: Optional[Integer] = None, z_method: Optional[str] = None,
                 max_flux_factor: Optional[Real] = None, device: str = "cpu", self_test: bool = True,
                 onnxruntime_library: Union[PathLike, bytes, None] = None, evaluator: str = "auto") -> None:
        if not runtime_available():
            raise RuntimeError(
                "this build of dodo has no closure runtime: ONNX Runtime's C API header was not found when it was "
                "built. Install the header (Debian 13: apt-get install libonnxruntime-dev; Debian 12: "
                "cmake/install_onnxruntime_headers.sh) and reinstall dodo; see docs/runtime.md")
        # None means the model's setting; the C API's "" and 0 for it are refused here (an unset
        # variable must not silently pick a setting), as dodo.box3d refuses them.
        if isinstance(z_method, str) and not z_method:
            raise ValueError('z_method must be "exact" or "jedynak", or None for the model\'s; got ""')
        order = None if lebedev_order is None else _integral("lebedev_order", lebedev_order)
        if order is not None and order <= 0:
            # A negative order was the runtime's "must be positive, or 0 for the model's", of a 0 that
            # Python refuses (outside probe, Python round forty-nine).
            raise ValueError(f"lebedev_order must be a Lebedev order (17, 41, 131), or None for the model's; got "
                             f"{_shown_number(order, short=False)}")
        if order is not None and order not in _core.available_lebedev_orders():
            # Refused here, as dodo.box3d refuses it: an order past the C int's range (2**31, 10**30) reached
            # the binding as a multi-line pybind11 "incompatible constructor arguments" TypeError (outside
            # probe, Python round forty-nine).
            raise ValueError("DODO_ERROR_INVALID_ARGUMENT: Box3D settings: lebedev_order "
                             f"{_shown_number(order, short=False)} is not available; "
                             f"available orders: {' '.join(map(str, _core.available_lebedev_orders()))}")
        # bool("no") is True: a string or number here would silently run (or skip) the self-test.
        if not isinstance(self_test, (bool, np.bool_)):
            raise TypeError(f"self_test must be True or False; got {self_test!r}")
        # The runtime checks these only when it loads a model: Closure("box3d", evaluator="nativ")
        # or device="gpu" was accepted silently (outside probe, round fifteen); same words as its.
        _text("device", device, '"cpu", "cuda" or "cuda:N"')
        if not re.fullmatch(r"cpu|cuda|cuda:[0-9]{1,6}", device):
            raise ValueError(f'DODO_ERROR_INVALID_ARGUMENT: unknown device "{_escaped(device)}" (known: "cpu", "cuda", '
                             '"cuda:N")')
        if _text("evaluator", evaluator, '"auto" or "onnxruntime"') not in ("auto", "onnxruntime"):
            raise ValueError(f'DODO_ERROR_INVALID_ARGUMENT: unknown network evaluator "{_escaped(evaluator)}" (known: '
                             f'"auto", "onnxruntime"){native_evaluator_hint(evaluator)}')
        model_bytes = _package_bytes(model) if _is_in_memory_package(model) else None
        if model_bytes is not None:
            _refuse_compressed_bytes(model_bytes)
        model_path = model_file(model)
        if model_path is not None and model is not None:
            if not model_path:  # an unset parameter must not silently drop the learned correction
                raise ValueError(f'empty model path: give a model package, or "{BOX3D_ONLY}" for Box3D without a '
                                 'learned correction (None: the default model)')
            if "\0" in model_path:  # os.path.exists says False: "does not exist" of a name no file can have
                raise ValueError(f'model path "{_escaped(model_path)}" holds a NUL character, which no file name '
                                 "can: give the package's path")
            if not os.path.exists(model_path):
                word = model_path.strip().lower()
                hint = " (the model shipped with dodo is model=None, which `dodo score` calls 'default')" \
                    if word in ("default", "none") else ""
                if word == BOX3D_ONLY:  # "Box3D", as the docs write the method, or "box3d " (round forty-seven)
                    hint = f' (Box3D alone, without a model, is the literal "{BOX3D_ONLY}": lower case, no spaces)'
                if re.match(r"(https?|s3|gs|ftp)://", model_path):  # a URL is no path (round 44)
                    hint = " (a URL: dodo reads local files; download the package first and give its path)"
                if model_path.startswith("file://"):
                    # Path.as_uri(), a browser's address bar: the file is local, its URL no path (round 48).
                    from urllib.parse import unquote, urlsplit

                    local = unquote(urlsplit(model_path).path)
                    hint = (f" (a file:// URL: give the file's path, {local!r}, which exists)" if os.path.exists(local)
                            else " (a file:// URL: give the file's path)")
                if model_path.startswith("~") and os.path.exists(os.path.expanduser(model_path)):
                    # A shell expands ~, Python does not: "does not exist" of a file that does (round 44).
                    expanded = os.path.expanduser(model_path)
                    hint = (f" (a leading ~ is the shell's: Python does not expand it; {expanded!r} exists: give "
                            "os.path.expanduser(path))")
                if "$" in model_path and os.path.expandvars(model_path) != model_path and \
                        os.path.exists(os.path.expandvars(model_path)):
                    # A path from a config file or a single-quoted argument keeps "$SCRATCH/m.onnx": the
                    # shell expands variables, Python does not (outside probe, Python round forty-eight).
                    expanded = os.path.expandvars(model_path)
                    hint = (f" (a $VARIABLE is the shell's: Python does not expand it; {expanded!r} exists: give "
                            "os.path.expandvars(path))")
                if not os.path.isabs(model_path) and not hint:
                    try:
                        os.getcwd()
                    except FileNotFoundError:
                        # A job's directory removed and made again (rm -rf run && mkdir run) under a process
                        # inside it: relative paths name nothing, though `ls run/m.onnx` shows the package
                        # (outside probe, Python round forty-eight).
                        hint = (" (the current directory was removed, so relative paths name nothing: give an "
                                "absolute path, or os.chdir into the directory again)")
                if not hint:
                    from ._atomic import file_on_the_way_hint, other_case_hint

                    hint = file_on_the_way_hint(model_path) or other_case_hint(model_path)
                stripped = model_path.strip()
                if stripped != model_path and stripped and word != BOX3D_ONLY and os.path.exists(stripped):
                    # A path read from a text file or a config line keeps its newline: 'm.onnx\n' was
                    # "does not exist" of a package that does (outside probe, Python round forty-eight).
                    hint = (f" (its name has leading or trailing white space; {stripped!r} exists: give "
                            "path.strip())")
                _refuse_a_path_that_is_there(model_path)
                raise FileNotFoundError(f"model package {model_path!r} does not exist{hint}")
            if os.path.isdir(model_path):
                _refuse_a_directory(model_path)
            _refuse_a_special_file(model_path)
            _refuse_known_non_packages(model_path)
        library = onnxruntime_library
        has_model = model_path is not None or model_bytes is not None
        if has_model and sys.is_finalizing():
            # Finding ONNX Runtime imports; at exit the import system is gone ("sys.meta_path is None"
            # in a traceback of importlib). Closures made before exit compute at exit (gil.hpp).
            raise RuntimeError("dodo.Closure() cannot load a model while Python shuts down (a __del__ or finalizer run "
                               "at exit, after the atexit handlers): make the Closure before, and call it then, or "
                               "use model='box3d'")
        if library is None and has_model and not os.environ.get("DODO_ONNXRUNTIME_LIBRARY"):
            library = onnxruntime_library_path()
        # What pickling needs to load the same closure again (see __reduce__): the model's source
        # (an absolute path: a worker may run elsewhere in the file tree) and the options as given.
        # Set with the runtime, once it loaded: a second __init__ that failed (another package, a refused
        # option) left the new path and options beside the old runtime, so that model_path named a package
        # not in use and a pickle loaded another closure, or none (outside probe, Python round fifty-eight).
        source = (model_bytes if model_bytes is not None else None if model is None
                  else BOX3D_ONLY if model_path is None else os.path.abspath(model_path))
        options = {"threads": threads, "chunk_size": chunk_size, "lebedev_order": lebedev_order,
                   "z_method": z_method, "max_flux_factor": max_flux_factor, "device": device,
                   "self_test": self_test, "evaluator": evaluator,
                   "onnxruntime_library": None if onnxruntime_library is None else _library_path(onnxruntime_library)}
        file_bytes = None if model_path is None else _model_file_bytes_if_not_utf8(model_path)
        library_given = _library_path(library)
        try:
            runtime = _core.Closure(
                model_bytes if model_bytes is not None else file_bytes if file_bytes is not None
                else BOX3D_ONLY if model_path is None else model_path,
                threads=min(_threads(threads), _most_workers()), chunk_size=_chunk_size(chunk_size),
                lebedev_order=0 if lebedev_order is None else _integral("lebedev_order", lebedev_order),
                z_method="" if z_method is None else _text("z_method", z_method, '"exact" or "jedynak"'),
                max_flux_factor=0.0 if max_flux_factor is None else _max_flux_factor(max_flux_factor),
                onnxruntime_library=library_given,
                device=_text("device", device, '"cpu", "cuda" or "cuda:N"'), run_self_test=bool(self_test and has_model),
                evaluator=_text("evaluator", evaluator, '"auto" or "onnxruntime"'))
        except (RuntimeError, ValueError, OSError) as raised:
            error = raised
            if isinstance(max_flux_factor, np.floating) and max_flux_factor.dtype.itemsize < 8 and \
                    "max_flux_factor" in str(error) and "was requested" in str(error):
                # np.float32(0.98) (read from a float32 file or array) is 0.9800000190734863, which the
                # runtime calls another value than the model's 0.98 without saying why (round 45).
                short = np.format_float_positional(max_flux_factor)  # its shortest digits: 0.98
                raise type(error)(f"{error} (max_flux_factor was given as {max_flux_factor.dtype} {short}, which "
                                  f"is {float(max_flux_factor)!r} in float64, in which Dodo computes: give {short} "
                                  "as a Python float, or None for the model's)") from None
            if file_bytes is not None and model_path is not None and "model in memory (" in str(error):
                # Read here, the runtime calls the file "model in memory (N bytes)": name it instead.
                text = re.sub(r"model in memory \(\d+ bytes?\)", lambda _: f"model file {_shown_path(model_path)}",
                              str(error), count=1)
                # and its words for refused bytes are a file's again (C round forty-six gave a buffer its own,
                # which this file, read here, then got: "truncated or damaged bytes? give the whole ...").
                text = text.replace("(truncated or damaged bytes? give the whole .onnx file's bytes and its size)",
                                    "(truncated or damaged file?)").replace("the bytes hold no graph",
                                                                            "the file has no graph")
                raise type(error)(_file_words(text, f"model file {_shown_path(model_path)}")) from None
            variable = os.environ.get("DODO_NETWORK_EVALUATOR", "")
            if evaluator == "auto" and "unknown network evaluator" in str(error) and native_evaluator_hint(variable):
                raise type(error)(f"{error}{native_evaluator_hint(variable)}") from None
            if "cannot load the ONNX Runtime library" in str(error):  # not a missing CUDA provider
                hint = bare_library_hint(library_given or os.environ.get("DODO_ONNXRUNTIME_LIBRARY", ""))
                if hint:
                    raise type(error)(f"{error}{hint}") from None
            if isinstance(model, bytes) and len(model) <= 4096 and os.path.exists(model):
                # os.fsencode(name) is a file's name, but bytes are a package's content: say so.
                these = "this 1 byte names" if len(model) == 1 else f"these {len(model)} bytes name"
                raise type(error)(f"{error}; {these} an existing file, but bytes are read "
                                  "as a package's content: give a file name as str or os.PathLike "
                                  "(os.fsdecode(name))") from None
            if model_bytes is not None and len(model_bytes) <= 16 and \
                    bytes(model_bytes).strip().lower() in (b"box3d", b"default"):
                # b"box3d" (an HDF5 attribute read as bytes, np.bytes_) was read as a 5-byte package: "a
                # field's length runs past the end at byte 2" (outside probe, Python round forty-seven).
                word = bytes(model_bytes).strip().decode()
                meant = ('the str "box3d" (Box3D alone)' if word.lower() == "box3d"
                         else "model=None (the shipped default model)")
                raise type(error)(f"{error}; these {len(model_bytes)} bytes spell {word!r}, but bytes are read as a "
                                  f"package's content: give {meant}") from None
            if error is not raised:
                raise error from None
            raise
        self._runtime, self._model_path, self._source, self._options = runtime, model_path, source, options
        self._library_given = library_given

    # -- evaluation
    def apply(self, F_init: RealArrayLike, u: Optional[RealArrayLike] = None, *,
              out: Optional[ClosureResult] = None) -> ClosureResult:
        """Closure of a batch: F_init (..., 6, 4), u (..., 4) or None (already in the rest frame).

        Cells with problems are flagged in ``status`` (dodo.CellStatus) and get an output that is
        always finite and realizable, never NaN: Box3D's result (the network's output not finite), or
        for a rejected cell its input where that is finite and realizable, zeros where a value of its
        F_init is not finite, else its input with negative densities set to 0 and each flux scaled onto
        |F| <= n (docs/runtime.md).

        Lorentz factors: lab-frame float64 values hold the rest frame only to ~W^2 eps relative (the boost's
        rounding; 6 W^2 eps measured in a round trip), so from W ~ 2e6 on cells lose their ELN crossings to
        rounding and come back NO_CROSSING (boosted along x, of 1,000 crossing states of the QKE solver's
        Emu recipe, data/qke: 6% at W = 2e6, 18% at 3e6, 46% at 5e6, 89% at 1e7, 93% at 1.9e7; of 1,000
        random crossing cells: 3% at 5e6, 81% at 1e7, all at 1.9e7; none of either at 1e6); u^t up to
        ~2e7 is accepted, so check the status there.

        out: a :class:`ClosureResult` to write into instead of new arrays (a previous call's
        result for cells of the same batch shape, or ``ClosureResult.empty(batch_shape)``), as a
        simulation's time loop calls it; returned. Its arrays must be C-contiguous, writeable, of
        the result's dtypes and shapes, and share no memory with F_init, u or each other. The
        results are the same bits as without ``out``. No array is allocated when F_init and u
        are C-contiguous float64 already (u of the full batch shape, not broadcast). Calls from
        several threads at once each need their own ``out``: an out that another call running now
        writes, or whose memory it reads as F_init or u, is refused (ValueError), as are inputs that
        another running call writes as its out. So is a call made by a signal handler on the arrays of
        the call it interrupted (that call goes on writing when the handler returns).
        """
        # Two calls at once (threads) writing the same out= arrays, or one reading another's, are
        # refused (_claim): their results mixed without a word (outside probe, round forty-five).
        with _claim({"F_init": F_init, "u": u}, out) as claim:
            flat_F, flat_u, batch = _prepare(F_init, u)
            # Growth rates in s^-1 come from the runtime, which has N_tot: no (n, 6) temporaries here,
            # so the peak memory stays near the input and output arrays.
            result = ClosureResult.empty(batch) if out is None else out
            outputs = _flat_outputs(result, ClosureResult, _CLOSURE_OUTPUTS, batch)
            claim.computing = True  # from here a signal handler's call must not touch these arrays
            with _fed_back_hint("F_pred", "closure.apply"):
                self._runtime.apply_into(flat_F, flat_u, *outputs)
        return result

    def __call__(self, F_init: RealArrayLike, u: Optional[RealArrayLike] = None) -> Float64Array:
        """F_pred (..., 6, 4) float64; see :meth:`apply` for the status and growth rate."""
        return self.apply(F_init, u).F_pred

    # -- information
    def self_test(self) -> float:
        """Runs the model's test vectors; returns the largest error in units of N_tot."""
        return self._runtime.self_test()

    @property
    def counters(self) -> dict[str, int]:
        """Events since creation (or reset): cells, rejected, no_crossing, box3d_limited,
        network_nonfinite, correction_limited."""
        return self._runtime.counters()

    def reset_counters(self) -> None:
        """Sets every counter of :attr:`counters` to 0."""
        self._runtime.reset_counters()

    @property
    def model_path(self) -> Optional[str]:
        """The model package's path as given (the default model's path for model=None); None for Box3D
        alone and for a package given as bytes."""
        return self._model_path

    @property
    def has_model(self) -> bool:
        """Whether a learned correction is applied (False for Box3D alone, model="box3d")."""
        return self._runtime.has_model

    @property
    def head(self) -> Optional[str]:
        """The model's output head, "direct" or "equivariant" (its "dodo.head" metadata;
        docs/model_package.md); None for Box3D alone."""
        return self._runtime.head

    @property
    def optional_outputs(self) -> list[str]:
        """The model's optional per-cell outputs in use: "uncertainty", "log_growth_ratio" (its
        "dodo.outputs" metadata; docs/model_package.md). Empty for Box3D alone."""
        return list(self._runtime.optional_outputs)

    @property
    def metadata(self) -> dict[str, str]:
        """The model's metadata_props (strings; see docs/model_package.md)."""
        return dict(self._runtime.metadata)

    @property
    def box3d_settings(self) -> dict:
        """The Box3D settings in use (scheme, form, lebedev_order, z_method, max_flux_factor): the
        model's, as :func:`dodo.box3d_settings` gives them."""
        return dict(self._runtime.box3d_settings)

    @property
    def threads(self) -> int:
        """Threads a call runs on, the calling one included: ``threads=`` as resolved (None: the usable
        cores; 0: 1; at most max(the usable cores, 64)), fewer where the system refused to start some."""
        return self._runtime.threads

    @property
    def onnxruntime(self) -> tuple[str, str]:
        """(library path, version) of the ONNX Runtime in use; empty without a model."""
        try:
            library = self._runtime.onnxruntime_library
        except UnicodeDecodeError:
            # The runtime returns the path as UTF-8 text: a library loaded through a
            # DODO_ONNXRUNTIME_LIBRARY name that is not UTF-8 (the option takes it as bytes since fda1adf3) made
            # this a UnicodeDecodeError, and `python -m dodo.test` a traceback (outside probe, round 26).
            given = self._library_given
            library = (os.fsdecode(given) if isinstance(given, bytes)
                       else os.environ.get("DODO_ONNXRUNTIME_LIBRARY", ""))
            if _is_utf8(library):
                library = "(a path that is not UTF-8)"
        return library, self._runtime.onnxruntime_version

    @property
    def evaluator(self) -> str:
        """Who evaluates the network: "native" (Dodo's kernels), "onnxruntime", or "" without a model."""
        return self._runtime.evaluator

    def __reduce__(self):
        # The runtime (a C++ object holding an ONNX Runtime session) cannot be pickled: a pickle
        # carries what loads it again, and the content digest that must match on the other side.
        options = dict(self._options)
        if options["onnxruntime_library"] is not None:
            options["onnxruntime_library"] = os.fspath(options["onnxruntime_library"])
        # A subclass comes back as itself, with the attributes it added: it came back as a plain
        # dodo.Closure without them, so a worker's call of its own method failed (outside probe, round 31).
        added = {key: value for key, value in self.__dict__.items() if key not in _CLOSURE_ATTRIBUTES}
        metadata = self.metadata
        # The metadata digest too: the content digest leaves the metadata out, so a package whose
        # metadata (Box3D settings, head, test vectors) was edited and re-signed since loaded in a
        # worker without a word (outside probe, round 37).
        arguments = (self._source, options, self._model_path, _model_digest(metadata))
        # The loader of the dodo._closure that sys.modules holds now, which pickle checks by name: after that
        # entry was deleted and dodo imported again, this module's own failed "it's not the same object as
        # dodo._closure._unpickle_closure" (outside probe, Python round sixty-five).
        loader = getattr(sys.modules.get(__name__), "_unpickle_closure", _unpickle_closure)
        if _is_plain_closure(type(self)) and not added:
            return (loader, arguments + (None, metadata.get(_METADATA_DIGEST)))
        return (loader, arguments + (type(self), metadata.get(_METADATA_DIGEST)), added or None)

    def __repr__(self) -> str:
        source = repr(self._model_path) if self._model_path is not None else "<in memory>"
        what = f"model={source}, head={self.head!r}" if self.has_model else "Box3D only"
        return f"dodo.Closure({what}, threads={self.threads})"


def _is_plain_closure(cls: type) -> bool:
    """Whether ``cls`` is dodo.Closure itself, as this module defines it now or defined it before an
    ``importlib.reload`` (IPython's autoreload, a notebook re-running its imports). After a reload,
    ``dodo.Closure`` (bound at ``import dodo``) and every closure made before are of the earlier
    class, which pickle cannot name (``dodo._closure.Closure`` is the new one): pickling one for a
    multiprocessing worker failed with "Can't pickle <class 'dodo._closure.Closure'>: it's not the
    same object as dodo._closure.Closure" (outside probe, round forty-three). Such a closure is
    pickled as a plain Closure, loaded again by the class this module defines."""
    return cls is Closure or (cls.__module__ == __name__ and cls.__qualname__ == "Closure")


#: The metadata key of a package's digest over its other metadata entries (docs/model_package.md).
_METADATA_DIGEST = "dodo.metadata_sha256"


def _model_digest(metadata: dict) -> Optional[str]:
    """The package's content digest (``dodo.content_sha256``; None without a model, or for a
    package written before digests)."""
    return metadata.get("dodo.content_sha256")


#: What Closure.__init__ sets: the rest of an instance's __dict__ (a subclass's own) travels in a pickle.
#: `_library_given` (added with the deployment probe) was missing: every plain Closure then pickled as
#: a "subclass" (its class by reference, the parent's library search result as state), which failed
#: after an importlib.reload of this module (outside probe, round forty-three).
_CLOSURE_ATTRIBUTES = frozenset({"_runtime", "_model_path", "_source", "_options", "_library_given"})


def _unpickle_closure(source, options: dict, model_path: Optional[str], digest: Optional[str],
                      cls: Optional[type[Closure]] = None, metadata_digest: Optional[str] = None
                      ) -> Union[Closure, UnusableClosure]:
    """A pickled :class:`Closure` loaded again (Closure.__reduce__); ``cls``: a subclass, made without
    calling its own __init__ (whose arguments the pickle does not know): pickle then sets the
    attributes it added. ``metadata_digest``: the package's ``dodo.metadata_sha256`` when pickled
    (pickles written before it carry none: the content digest alone is compared)."""
    try:
        if cls is None or cls is Closure:
            restored = Closure(source, **options)
        else:
            restored = cls.__new__(cls)
            Closure.__init__(restored, source, **options)
    except Exception as error:  # noqa: BLE001 - every reason the model does not load again: told at first use
        return UnusableClosure(_of_the_same_kind(error, f"cannot unpickle or copy dodo.Closure: {error}"))
    metadata = restored.metadata
    found, found_metadata = _model_digest(metadata), metadata.get(_METADATA_DIGEST)
    if found != digest or metadata_digest is not None and found_metadata != metadata_digest:
        where = f"model package {source!r}" if isinstance(source, str) else "the default model" if source is None \
            else "the model package"
        which, now, then = ("content", found, digest) if found != digest else ("metadata", found_metadata,
                                                                               metadata_digest)
        return UnusableClosure(ValueError(
            f"cannot unpickle or copy dodo.Closure: {where} is not the package the closure was made with ({which} digest "
            f"{str(now)[:16]}... now, {str(then)[:16]}... when pickled; the file was replaced or edited): make a new "
            "Closure from the package you mean"))
    # The path as the user gave it, unless relative: unpickled in another directory (a worker
    # process) it would name another file or none; the absolute path loaded is the one meant.
    restored._model_path = source if isinstance(source, str) and model_path is not None and \
        not os.path.isabs(model_path) else model_path
    return restored


def _of_the_same_kind(error: Exception, message: str) -> Exception:
    """``message`` as an exception of ``error``'s type where that type takes a message alone, else a RuntimeError."""
    try:
        return type(error)(message)
    except Exception:  # noqa: BLE001 - an exception type with other arguments
        return RuntimeError(message)


class UnusableClosure:
    """What a pickled :class:`Closure` becomes where its model does not load again as it was (the file
    replaced, edited, emptied or gone): every use raises the reason, a ValueError (the package is not the
    one pickled) or the load's own error. Raised at unpickling, the reason ended a multiprocessing Pool
    worker while it read its task: Pool started another worker, the task was lost and ``Pool.map``
    waited for ever (outside probe, Python round fifty). Now the task runs, its first use of the closure
    raises, and ``Pool.map`` raises that in the parent (concurrent.futures likewise, where the worker's
    death had read "BrokenProcessPool")."""

    def __init__(self, error: Exception) -> None:
        self.__dict__["_error"] = error

    def __getattr__(self, name: str):
        if name.startswith("__"):  # pickle's and copy's look-ups (__setstate__, ...): not a use
            raise AttributeError(name)
        raise self._reason()

    def __call__(self, *args, **kwargs):
        raise self._reason()

    def __setstate__(self, state) -> None:
        """A subclass's attributes that travelled with the pickle: the closure is not usable anyway."""

    def _reason(self) -> Exception:
        error = self.__dict__["_error"]
        return type(error)(*error.args)

    def __reduce__(self):
        return (getattr(sys.modules.get(__name__), "UnusableClosure", UnusableClosure), (self._reason(),))

    def __repr__(self) -> str:
        return f"<unusable dodo.Closure: {self.__dict__['_error']}>"


#: Workers a :class:`Closure` starts at most, whatever the CPU count: more than the CPUs the process
#: may run on are started up to this many (a few threads per core are harmless), no more.
MIN_WORKER_CAP = 64


def _most_workers() -> int:
    """Most worker threads a :class:`Closure` starts: the CPUs this process may run on, at least
    MIN_WORKER_CAP. Each worker gets its workspace (chunk_size cells, touched) when the closure is
    made, so threads=1024 on a 2-core machine took ~5-17 s and ~1,000 idle threads to create, for no
    speed: a CPU-bound call cannot use more workers than cores."""
    return max(MIN_WORKER_CAP, _usable_cpus())


#: Largest ``chunk_size`` of :class:`Closure` (the runtime's limit, cpp/src/runtime/closure.cpp).
MAX_CHUNK_SIZE = 1 << 20


def _max_flux_factor(value) -> float:
    """Box3D's flux-factor limit as asked for: a number in (0, 1). NaN passed the runtime's range
    check (a comparison with NaN is false) and then its "differs from the model's" check, so a
    closure with a model silently took the model's value for it."""
    number = _real("max_flux_factor", value)
    # 0 is the C API's "the model's"; Python's is None, and 0 is refused like z_method="" and
    # lebedev_order=0 (round eleven): it silently took the model's 0.98 (outside probe, round fifteen).
    if not 0.0 < number < 1.0:
        raise ValueError(f"max_flux_factor must lie in (0, 1), or None for the model's; got {value!r}")
    return number


def native_evaluator_hint(value) -> str:
    """Why "native", the word `Closure.evaluator` reports, is no value of the evaluator option or of
    DODO_NETWORK_EVALUATOR: `Closure(evaluator="native")` (or the variable set to it), to ask for what a
    closure said it ran, was "unknown network evaluator" without a word of "auto" (outside probe, Python
    round fifty-nine). '' for any other value."""
    if not isinstance(value, str) or value.strip().lower() != "native":
        return ""
    return ('; "native" is what Closure.evaluator reports where "auto" runs Dodo\'s own kernels (a package that '
            'describes its network, on the CPU): give "auto" for them, "onnxruntime" for ONNX Runtime\'s graph')


def bare_library_hint(library) -> str:
    """Where the ONNX Runtime library is named by a bare file name (no '/') that is a file in the current
    directory, why that file is not the one loaded: dlopen looks a bare name up in the loader's
    directories only, never in the current directory, so `onnxruntime_library="libonnxruntime.so.1.32.0"`
    (or the variable) beside the file failed with "cannot open shared object file: No such file or
    directory" of a file that is right there (outside probe, Python round fifty). '' otherwise."""
    name = os.fsdecode(library) if isinstance(library, (str, bytes)) else ""
    if not name or "/" in name or not os.path.isfile(name):
        return ""
    return (f" ({_escaped(name)} is a file in the current directory, but a library name without a '/' is looked "
            "for by the dynamic loader in its directories (LD_LIBRARY_PATH, the system's), never in the current "
            f"directory: give ./{_escaped(name)} or its absolute path)")


def _library_path(library) -> Union[str, bytes]:
    """The onnxruntime_library option as text ("" for the search; bytes for a name that is not
    UTF-8); a TypeError naming the option,
    where os.fspath's says only "expected str, bytes or os.PathLike object, not int". A relative
    path (one with a slash) is made absolute here, as the model's path is for pickling: a pickled
    closure carried it as given, and a worker started in another directory (or after os.chdir)
    could not load the library (outside probe, round 22). A bare name is dlopen's search name, kept."""
    if library is None or isinstance(library, str) and not library:
        return ""
    try:
        text = os.fsdecode(os.fspath(library))
    except TypeError:
        raise TypeError(f"onnxruntime_library must be a path (str or os.PathLike) or None; got "
                        f"{type(library).__name__}") from None
    if "\0" in text:
        # The runtime takes the path as C text, which ends at the NUL: "LIB\0anything" loaded LIB
        # without a word and `Closure.onnxruntime` named "LIB\x00anything" as the library in use
        # (outside probe, round forty-four). No file name holds a NUL.
        raise ValueError(f'onnxruntime_library "{_escaped(text)}" holds a NUL character, which no file name '
                         "can: give the library's path")
    text = os.path.abspath(text) if "/" in text and not os.path.isabs(text) else text
    # A name that is not UTF-8 (a Latin-1 directory, held surrogate-escaped) goes to the runtime as
    # the file system's bytes: pybind11 cannot pass it as text, and refusing it left a venv under
    # such a directory without a closure, although the library Dodo found there loads (deployment
    # probe: `python -m dodo.test`, `dodo score`, `dodo.Closure()` failed where a C host ran).
    return text if _is_utf8(text) else os.fsencode(text)


def _chunk_size(chunk_size) -> int:
    """Cells per network call: an integer in [1, MAX_CHUNK_SIZE], checked here so that a value
    beyond a C int gives this ValueError rather than pybind11's TypeError."""
    size = _integral("chunk_size", chunk_size)
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be an integer in [1, {MAX_CHUNK_SIZE}]; got "
                         f"{_shown_number(chunk_size, short=False)}")
    return size


def _package_bytes(model) -> bytes:
    """The bytes of an in-memory model package given as bytes, bytearray, memoryview, uint8 array or
    another object exposing the buffer protocol (an mmap)."""
    if isinstance(model, np.ndarray) and model.dtype not in (np.uint8, np.int8):
        raise TypeError(f"an in-memory model package must be bytes or a uint8 array, not an array of {model.dtype}")
    if isinstance(model, np.ndarray):
        return np.ascontiguousarray(model).tobytes()
    # tobytes: the view's bytes in logical order, whether or not it is contiguous (a strided view
    # cannot be cast).
    if isinstance(model, bytes):
        return model
    try:
        view = memoryview(model)
    except ValueError as error:  # a closed mmap: "mmap closed or invalid", naming no argument (round fifty-five)
        raise ValueError(f"model: cannot read the in-memory package ({type(model).__name__}): {error}") from None
    with view:
        # A buffer of wider items (array.array('d'), a memoryview of a float64 array) was read as its raw bytes,
        # where a float64 ndarray is refused by its dtype (outside probe, Python round fifty-six).
        if view.itemsize != 1 or view.format.lstrip("@=<>!") not in ("B", "b", "c"):
            try:
                items = np.dtype(view.format).name
            except TypeError:
                items = f"format {view.format!r}"
            kind = type(model).__name__
            raise TypeError(f"an in-memory model package must be bytes or a uint8 array, not {'an' if kind[0] in 'aeiou' else 'a'} "
                            f"{kind} of {items} ({view.itemsize}-byte items)")
        return view.tobytes()


@functools.lru_cache(maxsize=4)
def _cached_closure(model: Union[str, bytes, None], _identity: tuple = (), _evaluator_variable=None) -> Closure:
    return Closure(model)


#: Held while dodo.closure finds or makes its cached closure. Without it, N threads whose first call
#: came at once each made a closure (N model loads, N x the worker threads and their workspaces: 64
#: threads of a 64-core node, 4,096 threads and ~12 GiB at once) and kept one (outside probe, round
#: forty-three). Re-entrant: a signal handler calling dodo.closure in the thread that holds it.
_cache_lock = threading.RLock()


def _new_cache_lock() -> None:
    """A fork child's lock: another thread of the parent may have held it, making a closure."""
    global _cache_lock
    _cache_lock = threading.RLock()


#: The lock held by a fork under way (_hold_cache_lock_for_fork), waiting at most _FORK_WAIT_FOR_A_LOAD_S.
_fork_hold = _ForkHold(lambda: _cache_lock, lambda: _FORK_WAIT_FOR_A_LOAD_S)


#: Longest a fork waits for a closure that another thread is making (a model load takes well under 1 s).
_FORK_WAIT_FOR_A_LOAD_S = 30.0


def _hold_cache_lock_for_fork() -> None:
    """A fork waits for a closure being made in another thread, and holds the lock meanwhile: a
    handler of os.register_at_fork(after_in_child=...) registered before dodo was imported runs in
    the child before _new_cache_lock, and its dodo.closure call waited for ever on the lock copied
    held (7 forks in 20 while another thread made the first closure; outside probe "fork, threads and
    signals", round one). Held by the forking thread, the copy is that thread's in the child. The
    wait is bounded (a load that never ends, a model on a hung network file system, must not stop
    every fork of the process): past it the fork goes on as before, the lock not held. A signal
    handler that raises in these handlers loses no count of the lock (_box3d._ForkHold; outside
    probe, Python round fifty)."""
    _fork_hold.before()


def _release_cache_lock_after_fork() -> None:
    _fork_hold.after_in_parent()


def _new_cache_lock_after_fork() -> None:
    _fork_hold.forget()
    _new_cache_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_hold_cache_lock_for_fork, after_in_parent=_release_cache_lock_after_fork,
                        after_in_child=_new_cache_lock_after_fork)


def _cached_closure_for(model, identity: tuple, evaluator: Optional[str]) -> Closure:
    lock = _cache_lock  # the one taken is released, also in a child forked inside (by a signal handler)
    with lock:
        return _cached_closure(model, identity, evaluator)


def _evaluator_variable() -> Optional[str]:
    """$DODO_NETWORK_EVALUATOR now: part of the cache's key, since a closure made with "auto" reads
    it when it is made. A process that set it (or an invalid value) after its first dodo.closure
    call kept the cached closure's evaluator without a word, where dodo.Closure() followed it
    (outside probe, round forty-three)."""
    return os.environ.get("DODO_NETWORK_EVALUATOR")


def _file_identity(path: str) -> tuple:
    """What tells a model file's content apart without reading it: its resolved path, inode, size,
    modification time and status-change time (a package rewritten at the same path, or a relative
    path after a change of directory, is another key; the change time also catches a rewrite of
    the same size whose modification time was set back, which os.utime can do and nothing can to
    the change time); () where it cannot be stat'ed (Closure then says why)."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return ()
    return (os.path.realpath(path), status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def closure(F_init: RealArrayLike, u: Optional[RealArrayLike] = None,
            model: Union[str, os.PathLike, bytes, bytearray, memoryview, mmap.mmap, np.ndarray, None] = None
            ) -> Float64Array:
    """Predicted asymptotic four-fluxes F_pred (..., 6, 4) for F_init (..., 6, 4) and u (..., 4).

    F_pred alone: each cell's status flags (why it came back as zeros or as given), growth rate and
    uncertainty come with ``Closure(model).apply(F_init, u)``.

    model: as for :class:`Closure` (None: the default model; bytes, bytearray, memoryview or a
    uint8 array: the package's contents, never a path). The loaded closure is cached, so
    repeated calls do not reload the model; the cache knows a file by its resolved path, inode,
    size and modification time, so a package rewritten in place, or a relative path after
    os.chdir, loads what the path names now, and an in-memory package by its contents; a change
    of $DODO_NETWORK_EVALUATOR makes a closure that follows it.
    """
    evaluator = _evaluator_variable()
    if model is None:
        return _cached_closure_for(None, (), evaluator)(F_init, u)
    if _is_in_memory_package(model):
        return _cached_closure_for(_package_bytes(model), (), evaluator)(F_init, u)
    path = model if isinstance(model, str) else _path_text(model)
    identity = () if path == BOX3D_ONLY else _file_identity(path)
    key = identity[0] if identity else path
    return _cached_closure_for(key, identity, None if path == BOX3D_ONLY else evaluator)(F_init, u)


explain_type_names(ClosureResult, Closure, closure)
