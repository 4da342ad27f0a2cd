"""Outside probe, Python round sixty-seven: help() of dodo's public calls for a user who never opens
dodo._hints. Since typing round sixty-six the signatures name the hint aliases (``F_init:
'RealArrayLike'``, ``threads: 'Optional[Integer]'``, ``-> 'Float64Array'``), which no docstring
explained; each docstring now closes with what the aliases it names mean."""
import inspect
import os
import pydoc
import re
import subprocess
import sys

import dodo
import dodo.conventions

ALIASES = ("RealArrayLike", "Integer", "Real", "Float64Array")


def _public_callables():
    for module in (dodo, dodo.conventions):
        for name in dir(module):
            obj = getattr(module, name)
            if name.startswith("_") or not callable(obj) or getattr(obj, "__module__", "").split(".")[0] != "dodo":
                continue
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):
                for member_name, member in vars(obj).items():
                    if member_name.startswith("_") and member_name != "__call__":
                        continue
                    if callable(getattr(member, "__func__", member)):
                        yield f"{module.__name__}.{name}.{member_name}", getattr(obj, member_name)


def _aliases_in_signature(obj):
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return []
    return [alias for alias in ALIASES if re.search(rf"\b{alias}\b", text)]


def test_every_alias_a_signature_names_is_explained_in_its_help():
    unexplained = []
    checked = 0
    for qualname, obj in _public_callables():
        aliases = _aliases_in_signature(obj)
        if not aliases:
            continue
        checked += 1
        text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
        unexplained += [f"{qualname}: {alias}" for alias in aliases if not re.search(rf"\b{alias}: \w", text)]
    assert checked >= 15  # closure, Closure and its methods, box3d, invariants, the results, ...
    assert not unexplained, unexplained


def test_help_of_closure_says_what_its_arguments_and_result_are():
    text = pydoc.render_doc(dodo.closure, renderer=pydoc.plaintext)
    flat = " ".join(text.split())
    assert "RealArrayLike: a NumPy array of any real dtype (converted to float64), a nested list" in flat
    assert "Float64Array: a NumPy array of float64." in flat
    assert "Integer:" not in text  # only the names its signature uses
    paragraph = text[text.index("Type names in the signature"):]
    assert max(len(line) for line in paragraph.splitlines()) <= 104  # wrapped as the rest of the docstring
    # indented as the docstring's body, so that help strips both alike
    assert "\n    Type names in the signature (dodo._hints):\n        RealArrayLike:" in text
    assert "Closure(model).apply(F_init, u)" in text  # the docstring itself kept


def test_help_of_closure_class_explains_the_constructors_number_types():
    text = pydoc.render_doc(dodo.Closure, renderer=pydoc.plaintext)
    assert "Integer: an int or a NumPy integer" in text
    assert "Real: a float, an int, or a NumPy real or integer" in text


def test_the_results_empty_names_its_class_without_nested_quotes():
    for result_type in (dodo.ClosureResult, dodo.Box3DResult):
        returned = inspect.signature(result_type.empty).return_annotation
        assert returned == result_type.__name__, returned  # was "'ClosureResult'": help showed -> "'ClosureResult'"


def test_the_meanings_are_there_under_optimize_2():
    program = ("import dodo, inspect; doc = dodo.closure.__doc__; print(repr(doc[:40])); "
               "print('Float64Array: a NumPy array of float64.' in doc)")
    done = subprocess.run([sys.executable, "-OO", "-c", program], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    first, found = done.stdout.splitlines()
    assert first.startswith("'Type names in the signature"), first
    assert found == "True"


def test_help_of_the_result_types_shows_their_fields_types_as_the_functions_do():
    for result_type in (dodo.ClosureResult, dodo.Box3DResult):
        header = str(inspect.signature(result_type))
        assert "ForwardRef" not in header, header  # was F_pred: ForwardRef('Float64Array')
        assert "'Float64Array'" in header and "status: 'np.ndarray'" in header
        assert "ForwardRef" not in pydoc.render_doc(result_type, renderer=pydoc.plaintext)
    assert dodo.ClosureResult.empty(3).F_pred.shape == (3, 6, 4)
