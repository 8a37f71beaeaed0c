"""Cluster entry point for training: the same flags as `raycolor train`, on the cluster this job runs in.

    ray job submit --working-dir . -- python jobs/train.py --data s3://photos/train/ --output s3://runs/exp1 \
        --workers 8 --gpu --epochs 20
"""

import os
import sys

if __name__ == "__main__":
    # inside `ray job submit` RAY_ADDRESS is set; "auto" joins the cluster this script runs on otherwise
    os.environ.setdefault("RAY_ADDRESS", "auto")
    from raycolor.cli import app

    sys.exit(app(["train", *sys.argv[1:]]))
