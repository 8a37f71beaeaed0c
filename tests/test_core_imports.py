import subprocess
import sys

CORE = ["color", "model", "colorize", "checkpoint", "config", "images", "sources", "ledger", "metrics"]


def test_core_modules_do_not_import_ray():
    code = (
        "import importlib, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module('raycolor.' + name)\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray.'))[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_planning_imports_no_torch():
    """`raycolor list` and the planners import raycolor.planning: without torch (~3 s and ~500 MB)."""
    code = "import sys, raycolor.planning\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
