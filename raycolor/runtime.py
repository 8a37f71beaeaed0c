"""Connecting to Ray: an existing cluster when an address is given, otherwise a private local one."""

from __future__ import annotations

import os


def connect(address: str | None = None, *, num_cpus: int | None = None, s3_endpoint: str | None = None) -> str:
    """Start or join Ray; returns one line saying which, for the CLI to print first.

    Local mode binds every Ray service to 127.0.0.1 and starts no dashboard: nothing is reachable
    from other machines. s3_endpoint is exported to workers so every process talks to the same store.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": {"AWS_ENDPOINT_URL": s3_endpoint}} if s3_endpoint else None
    if ray.is_initialized():
        return "Using the Ray runtime already started in this process"
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return f"Connected to Ray cluster at {address}"
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
    )
    cpus = int(ray.cluster_resources().get("CPU", 0))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return f"Started a local Ray runtime on 127.0.0.1 ({cpus} CPUs, {gpus} GPUs; set --address or RAY_ADDRESS to use a cluster)"
