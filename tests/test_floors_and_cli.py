"""House rules a user relies on: the floors hold, and `cwm` answers --help and user errors cleanly."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CWM = [sys.executable, "-m", "cwm_envs.cli"]


def test_no_upward_imports():
    checker = ROOT.parent / "shared" / "tools" / "check_floors.py"
    if not checker.exists():
        import pytest

        pytest.skip("../shared/tools/check_floors.py not beside the checkout")
    out = subprocess.run([sys.executable, str(checker), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_help_lists_every_command_group():
    out = subprocess.run(CWM + ["--help"], capture_output=True, text=True, check=True).stdout
    for command in ("demo", "bench", "sandbox"):
        assert command in out


def test_user_error_is_one_line_not_a_traceback(tmp_path):
    out = subprocess.run(CWM + ["sandbox", "run", str(tmp_path / "missing.py")], capture_output=True, text=True)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "missing.py" in out.stderr
