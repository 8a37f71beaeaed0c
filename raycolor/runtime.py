"""Connecting to Ray: an existing cluster when an address is given, otherwise a private local one."""

from __future__ import annotations

import os

AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray >= 2.52 token authentication


def connect(address: str | None = None, *, num_cpus: int | None = None, s3_endpoint: str | None = None) -> str:
    """Start or join Ray; returns one line saying which, for the CLI to print first.

    Local mode starts no dashboard and relies on Ray's token authentication (on by default for a new local
    cluster): Ray's own services listen on the machine's address (Ray refuses a loopback node IP), so the
    token is what keeps other machines out. An explicit RAY_AUTH_MODE=disabled is respected but reported. s3_endpoint is exported to the workers.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": {"AWS_ENDPOINT_URL": s3_endpoint}} if s3_endpoint else None
    if ray.is_initialized():
        return "Using the Ray runtime already started in this process"
    if address:
        ray.init(address=address, runtime_env=runtime_env)
        return f"Connected to Ray cluster at {address}"
    # Ray >= 2.52 turns token auth on for a new local cluster unless RAY_AUTH_MODE says otherwise
    # (setting the variable here would be too late: Ray reads its config when it is imported)
    ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    auth = "token auth on" if os.environ.get(AUTH_MODE_ENV, "").lower() == "token" else "TOKEN AUTH OFF"
    return (
        f"Started a local Ray runtime ({cpus} CPUs, {gpus} GPUs; no dashboard, {auth}); "
        "set --address or RAY_ADDRESS to use a cluster"
    )
