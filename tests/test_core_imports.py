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


def test_a_warning_from_our_code_fails_the_suite():
    """pyproject's filterwarnings turns any warning raised from a raycolor module into an error; a third
    party's stays a warning (Ray Data's chatter is handled by runtime.quiet_stderr)."""
    import warnings

    import pytest

    with pytest.raises(UserWarning):
        warnings.warn_explicit("ours", UserWarning, "raycolor/x.py", 1, module="raycolor.x")
    with pytest.warns(UserWarning):
        warnings.warn_explicit("theirs", UserWarning, "other/x.py", 1, module="other.x")


def test_sources_does_not_import_images():
    """No import cycle images <-> sources: the suffix sets live in raycolor.suffixes, which both import;
    sources (listing, storage) never needs the decoder, and images imports sources only in its reading loop."""
    code = (
        "import sys, raycolor.sources, raycolor.suffixes\n"
        "assert 'raycolor.images' not in sys.modules\n"
        "import raycolor.images as images\n"
        "assert images.IMAGE_EXTENSIONS is raycolor.sources.IMAGE_SUFFIXES is raycolor.suffixes.IMAGE_SUFFIXES\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
