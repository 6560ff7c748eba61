import json
import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_ray_cluster_yaml_matches_the_schema_shipped_with_ray():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [t["node_config"]["InstanceType"] for t in types.values()]
    assert any(t.startswith("g5") for t in gpu_types) and any(t.startswith("p4d") for t in gpu_types)
    assert any("minseg" in command for command in config["setup_commands"])


def test_kuberay_manifests_reference_real_entrypoints_and_no_secrets():
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        text = path.read_text()
        document = yaml.safe_load(text)
        assert document["apiVersion"] == "ray.io/v1"
        assert document["kind"] in ("RayCluster", "RayJob")
        assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*:", text), f"{path} must use a secretRef"
        if document["kind"] == "RayJob":
            script = document["spec"]["entrypoint"].split()[1].removeprefix("/app/")
            assert (ROOT / script).exists(), f"{path}: entrypoint {script} not in the repo"
    assert os.path.exists(ROOT / "jobs" / "demo.py")
