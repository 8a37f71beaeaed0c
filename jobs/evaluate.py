"""Cluster entry point for evaluation: the same flags as `raycolor evaluate`."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("RAY_ADDRESS", "auto")
    from raycolor.cli import app

    sys.exit(app(["evaluate", *sys.argv[1:]]))
