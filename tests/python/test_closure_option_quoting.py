"""dodo.Closure's own refusals of a device or evaluator quote the value as the runtime quotes what a
host gives: control characters as \\xNN, so the message stays on one line and shows the character
that made the value unknown (`device="cpu\\n"` read from a file by a host's config reader)."""
import pytest

import dodo

if not dodo.runtime_available():
    pytest.skip("dodo built without the closure runtime", allow_module_level=True)


@pytest.mark.parametrize("option, value, shown", [
    ("device", "cpu\n", r'unknown device "cpu\x0a"'),
    ("device", "cuda\r\n", r'unknown device "cuda\x0d\x0a"'),
    ("evaluator", "auto\t", r'unknown network evaluator "auto\x09"'),
    ("evaluator", "onnx\x7fruntime", r'unknown network evaluator "onnx\x7fruntime"'),
])
def test_a_refused_option_is_quoted_escaped_on_one_line(option, value, shown):
    with pytest.raises(ValueError) as refused:
        dodo.Closure("box3d", **{option: value})
    message = str(refused.value)
    assert shown in message and "\n" not in message and "\t" not in message and "\r" not in message


def test_a_plain_unknown_value_reads_as_before():
    with pytest.raises(ValueError, match=r'unknown device "gpu" \(known: "cpu", "cuda", "cuda:N"\)'):
        dodo.Closure("box3d", device="gpu")
