"""Cluster entry point for bulk colorization: the same flags as `raycolor colorize`.

    ray job submit --working-dir . -- python jobs/colorize.py s3://archive/scans/ \
        --output s3://archive/colorized --checkpoint s3://runs/exp1/model --gpus 8 --format jpeg
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("RAY_ADDRESS", "auto")
    from raycolor.cli import app

    sys.exit(app(["colorize", *sys.argv[1:]]))
