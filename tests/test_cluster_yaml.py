"""Static checks of the Ray autoscaler config in cluster.yaml.

Nothing here talks to AWS or starts Ray. When Ray is installed, the config is
also validated against Ray's own autoscaler JSON schema.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    with CLUSTER_YAML.open() as f:
        cfg = yaml.safe_load(f)
    assert isinstance(cfg, dict)
    return cfg


def _ray_schema_path() -> Path | None:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "autoscaler" / "ray-schema.json"
        if path.is_file():
            return path
    return None


def test_top_level_fields(config):
    assert config["cluster_name"] == "raycolor"
    assert isinstance(config["max_workers"], int) and config["max_workers"] > 0
    assert isinstance(config["idle_timeout_minutes"], (int, float))
    assert config["idle_timeout_minutes"] > 0
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] == "us-west-2"


def test_docker(config):
    docker = config["docker"]
    assert "2.60.0-gpu" in docker["image"]
    assert docker["container_name"]
    assert docker["pull_before_run"] is True


def test_node_types(config):
    types = config["available_node_types"]
    assert isinstance(types, dict) and types
    for name, nt in types.items():
        assert isinstance(nt["node_config"], dict), name
        assert nt["node_config"].get("InstanceType"), name
        assert isinstance(nt["resources"], dict), name
        for key, value in nt["resources"].items():
            assert isinstance(value, int) and value >= 0, (name, key)
        # Instance profile for S3 access on every node.
        assert "Arn" in nt["node_config"]["IamInstanceProfile"], name
        if name != config["head_node_type"]:
            assert isinstance(nt["min_workers"], int), name
            assert isinstance(nt["max_workers"], int), name
            assert 0 <= nt["min_workers"] <= nt["max_workers"], name

    worker_max = sum(
        nt["max_workers"]
        for name, nt in types.items()
        if name != config["head_node_type"]
    )
    assert worker_max <= config["max_workers"]


def test_head_has_no_gpu(config):
    head = config["head_node_type"]
    assert head in config["available_node_types"]
    head_type = config["available_node_types"][head]
    assert head_type["resources"].get("GPU") == 0
    assert head_type["resources"].get("CPU", 0) > 0
    assert head_type["node_config"]["InstanceType"] == "m6i.2xlarge"


def test_gpu_worker_groups(config):
    types = config["available_node_types"]
    gpu_workers = {
        name: nt
        for name, nt in types.items()
        if name != config["head_node_type"] and nt["resources"].get("GPU", 0) > 0
    }
    assert gpu_workers, "at least one worker type must advertise GPUs"
    assert types["gpu_g5"]["node_config"]["InstanceType"] == "g5.2xlarge"
    assert types["gpu_g5"]["resources"]["GPU"] == 1
    assert (types["gpu_g5"]["min_workers"], types["gpu_g5"]["max_workers"]) == (0, 8)
    assert types["gpu_p4d"]["node_config"]["InstanceType"] == "p4d.24xlarge"
    assert types["gpu_p4d"]["resources"]["GPU"] == 8
    assert (types["gpu_p4d"]["min_workers"], types["gpu_p4d"]["max_workers"]) == (0, 2)


def test_commands(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head
    assert "--port=6379" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker
    # The package is installed from the mounted working copy, not a URL.
    assert config["file_mounts"]["~/raycolor"]
    setup = " ".join(config["setup_commands"])
    assert "pip install -e ~/raycolor" in setup
    assert "git+" not in setup and "://" not in setup


def test_no_inline_credentials(config):
    text = CLUSTER_YAML.read_text()
    for needle in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN="):
        assert needle not in text


@pytest.mark.ray  # Ray's own schema and validation: needs Ray's library
def test_ray_json_schema(config):
    """Strongest check: validate against the schema Ray's autoscaler uses."""
    pytest.importorskip("ray", reason="ray is not installed")
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = _ray_schema_path()
    if schema_path is None:
        pytest.skip("ray/autoscaler/ray-schema.json not found in the ray package")
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(config, schema)


@pytest.mark.ray  # Ray's own schema and validation: needs Ray's library
def test_ray_prepare_config(config):
    """Fill in Ray's AWS defaults and run Ray's full config validation.

    Uses private Ray APIs; skipped if they move.
    """
    pytest.importorskip("ray", reason="ray is not installed")
    pytest.importorskip("jsonschema")
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:  # pragma: no cover - depends on Ray version
        pytest.skip(f"Ray's private config helpers are unavailable: {exc}")
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] == config["head_node_type"]
