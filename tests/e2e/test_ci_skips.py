"""The ci_skips plugin: a skip fails the run under CI=true and stays a skip otherwise."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_pytest(tmp_path, ci):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_needs_tool():\n"
        "    pytest.skip('frobnicator is missing')\n"
        "def test_fine():\n"
        "    assert True\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = HERE
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "ci_skips", str(tmp_path / "test_sample.py")],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)


def test_skip_fails_under_ci(tmp_path):
    r = run_pytest(tmp_path, ci=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed, 1 passed" in r.stdout
    assert "frobnicator is missing" in r.stdout


def test_skip_stays_a_skip_locally(tmp_path):
    r = run_pytest(tmp_path, ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout
