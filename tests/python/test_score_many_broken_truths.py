"""`dodo score` on many files whose truth breaks conservation: one warning line counting them, not a
line per file (hundreds of lines before the table on a campaign's glob; outside probe, Python round
fifty-one's not-fixed item). A few files keep their own lines."""
import pytest

from test_probe_scoring import score_json, synthetic_states, write_emu


def broken_files(tmp_path, count):
    paths = []
    for k in range(count):
        emu_initial, emu_final = synthetic_states(40 + k, 6)
        emu_final[1, 3, 0, 0] *= 1.2  # one state's n(nu_e) made up: conservation broken
        path = tmp_path / f"broken_{k}.h5"
        write_emu(path, emu_initial, emu_final)
        paths.append(path)
    return paths


@pytest.mark.parametrize("count", [2, 6])
def test_broken_truths_of_many_files_are_one_warning(capsys, tmp_path, count):
    paths = broken_files(tmp_path, count)
    report, _, err = score_json(capsys, tmp_path, "box3d", *paths, bootstrap=100)
    warnings = [line for line in err.splitlines() if "does not conserve" in line]
    if count <= 3:
        assert len(warnings) == count and all("1 of 6 states have a truth" in line for line in warnings), err
    else:
        assert len(warnings) == 1, err
        assert f"{count} states of {count} files" in warnings[0] and "more files" in warnings[0], warnings
    assert report["n_states"] == 6 * count  # scored as given
