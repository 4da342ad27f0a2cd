"""The command line: the main job's reference table and `dodo info`."""
import subprocess
import sys

from dodo.cli import main


def test_reference_table_passes_and_shows_conservation(capsys):
    assert main(["reference"]) == 0
    out = capsys.readouterr().out
    assert "nsm1" in out and "largest deviation from the reference outputs" in out
    assert main(["reference", "--lebedev-order", "131", "--z-method", "exact"]) == 0


def test_info_lists_versions(capsys):
    assert main(["info"]) == 0
    assert "dodo " in capsys.readouterr().out


def test_python_dash_m_dodo_and_smoke_test():
    run = subprocess.run([sys.executable, "-m", "dodo", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "reference" in run.stdout
    smoke = subprocess.run([sys.executable, "-m", "dodo.test"], capture_output=True, text=True)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
