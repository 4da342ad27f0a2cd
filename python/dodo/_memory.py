"""Running out of memory while libraries load: one set of words for every place that says it.

dodo.cli.main (an import inside a command), the training commands' handler (dodo.training.cli._friendly)
and the start-up of the `dodo` command (dodo._startup, before main runs: numpy's import) each said it in
their own words, or not at all (outside probe, Python round fifty-four). Nothing here imports more than
the standard library's resource module, so that it still works when memory is that short.
"""
from __future__ import annotations

try:  # now, at start-up: imported when memory has run short, it failed too (`ulimit -v 140000`)
    import resource
except ImportError:  # no resource module (Windows)
    resource = None  # type: ignore[assignment]  # its users catch the AttributeError


def not_enough_memory_to_load() -> str:
    """The advice for a library that could not be loaded for want of memory, naming the address-space
    limit (RLIMIT_AS, `ulimit -v`) where one is set."""
    return f"not enough memory to load the library: {more_memory_advice()}"


def address_space_limit_kb():
    """The address-space limit (RLIMIT_AS, `ulimit -v`) in kB, or None where none is set."""
    try:
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (OSError, ValueError, AttributeError):  # no resource module (Windows)
        return None
    return None if limit == resource.RLIM_INFINITY or limit < 0 else limit // 1024


def more_memory_advice() -> str:
    """What to do when memory ran out: raise the address-space limit (RLIMIT_AS, `ulimit -v`), naming it,
    where one is set; else free memory or use a machine with more."""
    limit = address_space_limit_kb()
    if limit is not None:
        return f"the address-space limit (ulimit -v) is {limit} kB; raise it, e.g. ulimit -v unlimited, and run again"
    return "free memory (end other programs) or run it on a machine with more, and run again"


def hdf5_ran_out_of_memory(text: str) -> bool:
    """Whether HDF5's error ``text`` says it could not allocate memory (`memory allocation failed for
    chunk`, under an address-space limit), not that the file is damaged."""
    text = text.lower()
    return "memory allocation failed" in text or "cannot allocate memory" in text or "unable to allocate" in text


def with_memory_advice(text: str) -> str:
    """An error's one-line ``text``, followed by the advice for memory where it is HDF5's `memory allocation
    failed` (h5py under an address-space limit: `dodo apply: error: Can't create property (memory allocation
    failed)` said no more; outside probe, Python round fifty-six, section 91's list); unchanged otherwise, and
    where it gives the advice already."""
    if not hdf5_ran_out_of_memory(text) or "not enough memory" in text.lower():
        return text
    return f"{text}; not enough memory: {more_memory_advice()}"


def out_of_memory_while_importing() -> str:
    """The error of a command whose imports ran out of memory (after `dodo X: error: `)."""
    return f"out of memory while importing the libraries it needs ({not_enough_memory_to_load()})"


def raised_inside_an_import(error: BaseException) -> bool:
    """Whether ``error`` was raised while a module was being imported: a module's body (or a frame of
    importlib's loader, which it mostly removes) in its traceback, which starts in main()."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "<module>" or \
                str(frame.tb_frame.f_globals.get("__name__", "")).startswith("importlib._bootstrap"):
            return True
        frame = frame.tb_next
    return False


def import_ran_out_of_memory(error: BaseException | None) -> bool:
    """Whether an import failed for want of memory: the dynamic loader's `failed to map segment` or
    ENOMEM's `Cannot allocate memory` in its text, or a MemoryError, in ``error`` or in an error it came
    from (numpy re-raises the loader's ImportError as its own, whose text is advice about the installation).
    Under an address-space limit, also a SystemError raised inside an import: `dodo train` under `ulimit -v
    700000` ended with `SystemError: error return without exception set` out of an import, as a traceback
    (an extension module's failed allocation that set no error; outside probe, Python round fifty-six)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MemoryError):
            return True
        if isinstance(error, SystemError) and address_space_limit_kb() is not None and raised_inside_an_import(error):
            return True
        text = " ".join(str(error).split()).lower()
        if isinstance(error, ImportError) and ("failed to map segment" in text or "cannot allocate memory" in text):
            return True
        error = error.__cause__ or error.__context__
    return False
