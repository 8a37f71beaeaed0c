import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

PROBE = """
import os, ray
from raycolor.pipelines.runtime import connect
line = connect(None, num_cpus=1)
print(line)
print("AUTH", os.environ.get("RAY_AUTH_MODE"))
node = ray._private.worker.global_worker.node
print("DASHBOARD", node.address_info.get("webui_url"))
ray.shutdown()
"""


def test_local_ray_has_token_auth_and_no_dashboard(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Started a local Ray runtime") and "token auth on" in lines[0]
    assert "AUTH token" in lines
    assert any(line.startswith("DASHBOARD") and line.split(" ", 1)[1] in ("None", "") for line in lines), lines
