"""Shared fixtures: a real S3 API (moto in server mode, no mocking of S3 calls) and a local Ray.

* ``s3_server`` (session): starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 and a free port
  and, for the whole session, puts ``AWS_ENDPOINT_URL`` and dummy credentials/region into
  ``os.environ``. Setting them at session level (not per test) means every process started later
  -- notably Ray workers, which inherit the driver's environment at ``ray.init`` -- talks to moto
  whatever the order in which fixtures are requested.
* ``s3_env`` (function): the handle tests use: ``.endpoint``, ``.bucket(name)`` (creates a fresh,
  uniquely named bucket and returns its name) and ``.fs()`` (a new ``s3fs.S3FileSystem`` on the
  endpoint, bypassing s3fs's instance and listing caches). It re-asserts the environment with
  ``monkeypatch`` so that a test that changes those variables cannot leak into the next one.
* ``ray_local`` (session): ``ray.init(num_cpus=2, include_dashboard=False)``, shut down at the
  end. It depends on ``s3_server`` so the S3 environment is in place *before* Ray starts and its
  workers inherit it; tests may request ``ray_local`` and ``s3_env`` in either order.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# `make test-fast` sets this: every test that needs no Ray, and none that does. In that tier `import ray` fails
# (so does `import ray.data`, ...): a test that needs Ray fails loudly instead of starting Ray and being counted
# as fast. Left out of the tier, by marker: `slow` (starts Ray or a subprocess, which this guard cannot reach)
# and `ray` (needs Ray's library or a cluster; given here to every test that uses ray_local / ray_address); test
# files that import Ray at module level are not even collected.
NO_RAY = os.environ.get("RAYCOLOR_NO_RAY") == "1"
_RAY_FIXTURES = ("ray_local", "ray_address")

if NO_RAY:
    sys.modules["ray"] = None  # type: ignore[assignment]
    collect_ignore = [
        p.name for p in Path(__file__).parent.glob("test_*.py")
        if re.search(r"^(import|from) ray\b", p.read_text(), re.MULTILINE)
    ]


def pytest_configure(config):
    # Every Ray the suite starts (the session's, a CLI subprocess's, the chaos cluster's) keeps its idle workers for
    # the next task instead of ending those above num_cpus after 1 s idle. A session's Ray outlives hundreds of small
    # runs, and each new worker imports torch, Ray Data and raycolor again (~3 CPU-s): keeping them cut the suite's
    # CPU by a sixth (docs/performance.md). Ray reads RAY_<setting> when it starts; setdefault leaves a caller's own
    # value. A single product run ends no worker mid-run, so raycolor itself keeps Ray's default.
    os.environ.setdefault("RAY_num_workers_soft_limit", "8")
    os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "300000")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each xdist worker shares the machine's cores with the others, so torch in the worker's own process (the
        # numeric tests, in-process drivers) keeps to one thread. Two threads per worker on a 2-core box bought no
        # time and cost a quarter more CPU: the numeric core alone, quiet, took 61 s and 73.7 CPU-s on 2 threads,
        # 54 s and 59 CPU-s on 1. Only this process: Ray's tasks, the model actor and the training workers set
        # their own threads (raycolor.pipelines), and tests that need more set them.
        import torch

        torch.set_num_threads(1)
    config.addinivalue_line(
        "markers", "ray: needs Ray, its library or a cluster (given to every test using ray_local or ray_address); "
        "not in make test-fast")


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the marker must be there when it looks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(f in item.fixturenames for f in _RAY_FIXTURES):
            item.add_marker(pytest.mark.ray)
    # The numeric core's reruns under the other CPU kernels (one core's work each, ~1 min) go last: xdist hands a
    # file to whichever worker is free, so they fill the suite's tail, where the other worker runs the last training
    # file alone and a core would otherwise idle.
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_cpu_kernels.py"))
    if NO_RAY:
        out = [i for i in items if i.get_closest_marker("slow") or i.get_closest_marker("ray")]
        if out:
            config.hook.pytest_deselected(items=out)
            items[:] = [i for i in items if not (i.get_closest_marker("slow") or i.get_closest_marker("ray"))]


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that could point boto at real credentials or another endpoint.
AWS_ENV_UNSET = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_for(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, **AWS_ENV}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server for the session; the AWS env vars point at it meanwhile."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (*_env_for(endpoint), *AWS_ENV_UNSET)}
    os.environ.update(_env_for(endpoint))
    for k in AWS_ENV_UNSET:
        os.environ.pop(k, None)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@dataclass
class S3Env:
    endpoint: str

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        )

    def bucket(self, name: str = "test") -> str:
        """Create a fresh bucket whose name starts with ``name`` and return its (unique) name."""
        stem = "".join(c if c.isalnum() or c == "-" else "-" for c in name.lower()).strip("-") or "b"
        bucket = f"{stem[:40]}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def fs(self):
        """A new s3fs filesystem on the moto endpoint (no instance cache, no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint,
            key=AWS_ENV["AWS_ACCESS_KEY_ID"],
            secret=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            skip_instance_cache=True,
            use_listings_cache=False,
        )


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3Env:
    """Handle on the session's moto S3 server; buckets made with ``.bucket()`` are unique per call."""
    for k, v in _env_for(s3_server).items():
        monkeypatch.setenv(k, v)
    for k in AWS_ENV_UNSET:
        monkeypatch.delenv(k, raising=False)
    return S3Env(endpoint=s3_server)


@pytest.fixture(scope="session")
def ray_local(s3_server: str) -> Iterator[None]:
    """A local Ray with 2 CPUs for the session.

    Depends on ``s3_server`` so that AWS_ENDPOINT_URL and the dummy credentials are already in
    ``os.environ`` when ``ray.init`` starts the raylet: Ray workers inherit that environment, so
    code running in tasks/actors reaches moto without any per-call configuration.
    """
    import ray

    started = False
    if not ray.is_initialized():
        # address="local": a new runtime, never a cluster another process left registered on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> str:
    """A saved checkpoint of a seeded, untrained model (weights=None) rendering at 32 px."""
    import torch

    from raycolor.core import checkpoint
    from raycolor.core.model import build_colorizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_ckpt")
    checkpoint.save(str(d), build_colorizer(weights=None), render_size=32)
    return str(d)


@pytest.fixture(scope="session")
def tiny_classification_ckpt(tmp_path_factory) -> str:
    """tiny_ckpt's classification twin: the derived bins, unweighted prior, rendering at 32 px."""
    import torch

    from raycolor.core import checkpoint
    from raycolor.core.model import build_colorizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_classification_ckpt")
    checkpoint.save(str(d), build_colorizer(weights=None, head="classification"), render_size=32)
    return str(d)


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """The GCS address of the session's local Ray, for drivers run as subprocesses (the `raycolor` CLI, job
    scripts) to join with RAY_ADDRESS: a second local Ray per subprocess costs ~20 s of a 2-core CI box's
    time, and joining a running cluster is how jobs run in production anyway. Tests about local mode itself
    (its first line, Ctrl-C at a terminal) start their own."""
    import ray

    return ray.get_runtime_context().gcs_address

