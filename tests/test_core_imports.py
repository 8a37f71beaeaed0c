import subprocess
import sys

CORE = ["color", "model", "colorize", "checkpoint", "config", "images", "storage", "inputs", "ledger", "metrics"]


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


def test_storage_and_inputs_do_not_import_images():
    """No import cycle images <-> storage/inputs: the suffix sets live in raycolor.suffixes, which images and
    inputs import; storage and inputs never need the decoder, and images imports storage only in its reading
    loop. The rooms stack one way: storage imports neither inputs nor the ledger, inputs not the ledger."""
    code = (
        "import sys, raycolor.storage\n"
        "assert not {'raycolor.inputs', 'raycolor.ledger', 'raycolor.images'} & set(sys.modules)\n"
        "import raycolor.inputs, raycolor.suffixes\n"
        "assert not {'raycolor.ledger', 'raycolor.images'} & set(sys.modules)\n"
        "import raycolor.images as images\n"
        "assert images.IMAGE_EXTENSIONS is raycolor.inputs.IMAGE_SUFFIXES is raycolor.suffixes.IMAGE_SUFFIXES\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_block_sizing_rule():
    """runtime.rows_per_block (no Ray when cpus is given): ~4 blocks per CPU, capped, never below 1 row."""
    from raycolor.runtime import MAX_BLOCK_ROWS, rows_per_block

    assert MAX_BLOCK_ROWS == 128
    assert [rows_per_block(n, 2) for n in (0, 1, 8, 9, 80, 1024, 2_000_000)] == [1, 1, 1, 2, 10, 128, 128]
    assert rows_per_block(2_000_000, 2, cap=64) == 64 and rows_per_block(100, 0) == 25  # cpus at least 1
