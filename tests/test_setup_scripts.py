"""scripts/setup.sh on a machine whose default Python is not 3.11: it looks
further and uses a 3.11 (the build needs one), whatever PYTHON names."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "scripts", "setup.sh")


def find_python(tmp_path, python):
    env = {"PATH": os.environ["PATH"], "PYTHON": python, "HOME": str(tmp_path)}
    return subprocess.run(["bash", SETUP, "--find-python"], capture_output=True, text=True,
                          env=env, timeout=60)


def test_a_python_that_is_not_311_is_passed_over(tmp_path):
    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\necho 'Python 3.12.3'\nexit 1\n")  # fails the version check
    fake.chmod(0o755)
    result = find_python(tmp_path, str(fake))
    assert result.returncode == 0, result.stderr
    chosen = result.stdout.strip()
    assert chosen != str(fake)
    version = subprocess.run([chosen, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60).stdout
    assert version.strip() == "(3, 11)"


def test_the_python_it_is_given_wins_when_it_is_311(tmp_path):
    result = find_python(tmp_path, sys.executable)
    assert (result.returncode, result.stdout.strip()) == (0, sys.executable)


def test_without_a_local_torch_wheel_vllm_setup_turns_to_pytorchs_cpu_index(tmp_path):
    """pip without this machine's configuration (no local wheel folder): PyPI has
    no torch +cpu build, so setup.sh asks PyTorch's CPU index (here a closed
    port, to fail at once), fails, and leaves no .ready stamp: the real-vLLM
    tests are then skipped."""
    venv = tmp_path / "venv"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull,
           "PYTHON": sys.executable, "VLLM_VENV": str(venv),
           "VLLM_MODEL_DIR": str(tmp_path / "model"),
           "TORCH_CPU_INDEX": "http://127.0.0.1:9/simple"}
    result = subprocess.run(["bash", os.path.join(ROOT, "vllm_replicas", "setup.sh")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert ("torch 2.13.0+cpu is not on pip's configured indexes; trying "
            "http://127.0.0.1:9/simple") in result.stderr, result.stderr[-2000:]
    assert not (venv / ".ready").exists()
