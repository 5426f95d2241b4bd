"""The opt-in parity scripts' one way into their PyTorch environment.

Each script runs under the system python3 first; `reexec_in_venv` creates the virtual
environment (once), installs the packages from PyPI when one of `imports` fails to import there,
and runs the script again inside it with its arguments. Inside (an environment variable marks
the second run) it returns at once.
"""

import os
import subprocess
import sys
from pathlib import Path

INNER = "CBS_PARITY_IN_VENV"


def reexec_in_venv(venv: Path, packages, imports, script):
    """Run `script` (the caller's `__file__`) again inside `venv` with `packages` installed.

    `imports`: the module names whose import proves the environment is complete.
    """
    if os.environ.get(INNER) == "1":
        return
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating venv {venv}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    check = subprocess.run([str(python), "-c", "import " + ", ".join(imports)], capture_output=True)
    if check.returncode != 0:
        print(f"installing {' '.join(packages)} into {venv} (large download)", flush=True)
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", *packages])
    env = dict(os.environ, **{INNER: "1"})
    sys.exit(subprocess.call([str(python), str(script), *sys.argv[1:]], env=env))
