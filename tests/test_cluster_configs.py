import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _manifests() -> list[tuple[Path, dict]]:
    """The KubeRay manifests in cluster/ (runtime_env.yaml there is a Ray runtime environment)."""
    return [(path, yaml.safe_load(path.read_text())) for path in sorted((ROOT / "cluster").glob("*.yaml"))
            if path.name != "runtime_env.yaml"]


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
    for path, document in _manifests():
        text = path.read_text()
        assert document["apiVersion"] == "ray.io/v1"
        assert document["kind"] in ("RayCluster", "RayJob")
        assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*:", text), f"{path} must use a secretRef"
        if document["kind"] == "RayJob":
            script = document["spec"]["entrypoint"].split()[1].removeprefix("/app/")
            assert (ROOT / script).exists(), f"{path}: entrypoint {script} not in the repo"
    assert os.path.exists(ROOT / "jobs" / "demo.py")


def test_kuberay_manifests_match_the_crd_schema():
    """The schema is ours (cluster/schema/, from KubeRay's v1 types): unknown or misspelt fields and non-string
    rayStartParams (the API server wants map[string]string) fail here instead of on the cluster."""
    import jsonschema

    schema = json.loads((ROOT / "cluster" / "schema" / "kuberay-v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    manifests = _manifests()
    assert {document["kind"] for _, document in manifests} == {"RayCluster", "RayJob"}
    for path, document in manifests:
        jsonschema.validate(document, schema)
    _, cluster = next(m for m in manifests if m[1]["kind"] == "RayCluster")
    broken = json.loads(json.dumps(cluster))
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(broken, schema)
    broken = json.loads(json.dumps(cluster))
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(broken, schema)


def _shell_argv(entrypoint: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The entrypoint as KubeRay's submitter shell leaves it: `python` replaced by one that prints its argv."""
    printer = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    command = re.sub(r"^python3?\b", lambda _: printer, entrypoint.strip())
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env or {"PATH": "/usr/bin:/bin"})


def test_rayjob_entrypoints_survive_the_submitter_shell_and_parse():
    """KubeRay runs spec.entrypoint through sh in its submitter pod (no minseg variables there): the words
    must come out as written and be options the job's minseg command accepts."""
    from minseg.cli import build_parser

    jobs = [document for _, document in _manifests() if document["kind"] == "RayJob"]
    assert jobs
    for document in jobs:
        done = _shell_argv(document["spec"]["entrypoint"])
        assert done.returncode == 0 and not done.stderr, done.stderr
        argv = json.loads(done.stdout)
        assert all(word and "$" not in word for word in argv), argv
        script = ROOT / argv[0].removeprefix("/app/")
        assert script.exists(), f"entrypoint {argv[0]} is not in the repository (the image copies jobs/ to /app)"
        command = re.search(r'main\(\["(\w+)"', script.read_text()).group(1)
        build_parser().parse_args([command, *argv[1:]])  # SystemExit(2) on an option the command lacks
    # the fault this guards against: a shell substitution in the entrypoint breaks in the submitter pod
    broken = _shell_argv("python /app/jobs/demo.py --out $(MINSEG_OUTPUT)")
    assert "not found" in broken.stderr or json.loads(broken.stdout)[-1] == "--out"


def test_every_manifest_runs_the_image_the_dockerfile_builds():
    """One Ray version and one torch pin across the Dockerfile, the README's set-up, pyproject's Ray floor and
    every cluster manifest; images named by minseg's version; every path the Dockerfile copies exists."""
    import ray
    import torch

    import minseg

    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)-py311-gpu$", dockerfile, re.M).group(1)
    assert base == ray.__version__, "the image's Ray must be the Ray the tests ran with"
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert f"torch=={torch_pin}" in (ROOT / "README.md").read_text()
    assert torch.__version__.split("+")[0] == torch_pin
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) /app/?\S*$", dockerfile, re.M):
        for name in source.split():
            assert (ROOT / name).exists(), f"the Dockerfile copies {name}, which is not in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"minseg", "jobs", "configs", "pyproject.toml"} & set(ignored)

    images = {yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())["docker"]["image"]}
    for path, document in _manifests():
        images |= set(re.findall(r"image:\s*(\S+)", path.read_text()))
        spec = document["spec"].get("rayClusterSpec", document["spec"])
        assert spec["rayVersion"] == ray.__version__, path
    # one image name everywhere (renaming it means renaming it in every manifest), in its two variants
    names = {image.rsplit(":", 1)[0] for image in images}
    tags = {image.rsplit(":", 1)[1] for image in images}
    assert len(names) == 1 and tags == {f"{minseg.__version__}-cpu", f"{minseg.__version__}-gpu"}, images
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert "docker build -f cluster/Dockerfile" in docs and f"minseg:{minseg.__version__}-gpu" in docs


def test_runtime_env_file_is_valid_and_lists_pyprojects_dependencies():
    """cluster/runtime_env.yaml (stock Ray images + --working-dir) is what Ray accepts, and installs exactly
    pyproject's dependencies but Ray, with torch at the README's pin."""
    import tomllib

    from ray.runtime_env import RuntimeEnv

    document = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    RuntimeEnv(**document)  # raises on unknown fields or a malformed pip section
    listed = {re.split(r"[<>=\[]", p, maxsplit=1)[0]: p for p in document["pip"]["packages"]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=\[]", p, maxsplit=1)[0]: p for p in project if not p.startswith("ray")}
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert listed.pop("torch") == f"torch=={torch_pin}"
    wanted.pop("torch")
    assert listed == wanted


def test_gpu_pods_hold_the_segment_actors_the_scaling_guide_recommends():
    """docs/scaling.md's GPU settings (actors per GPU x cpus_per_actor, plus a block read) fit each GPU pod: with 8
    CPUs a pod held one of the two actors a GPU was meant to keep busy. Every worker pod gives Ray's object store a
    memory-backed /dev/shm (else it falls back to /tmp on disk)."""
    from minseg.inference.config import SegmentSettings

    guide = (ROOT / "docs" / "scaling.md").read_text()
    block = re.search(r"## Settings for a GPU cluster\s+```yaml\n(.*?)```", guide, re.S).group(1)
    settings = SegmentSettings(**yaml.safe_load(block)["segment"])
    actors_per_gpu = round(1 / settings.gpus_per_actor)
    gpu_groups = 0
    for path, document in _manifests():
        spec = document["spec"].get("rayClusterSpec", document["spec"])
        for group in spec["workerGroupSpecs"]:
            (container,) = group["template"]["spec"]["containers"]
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            assert "/dev/shm" in mounts, f"{path}: worker group {group['groupName']} has no /dev/shm volume"
            limits = container["resources"]["limits"]
            if gpus := int(limits.get("nvidia.com/gpu", 0)):
                gpu_groups += 1
                needed = gpus * actors_per_gpu * settings.cpus_per_actor + settings.read_cpus
                assert needed <= float(limits["cpu"]), f"{path}: {group['groupName']} pods hold {limits['cpu']} CPUs"
    assert gpu_groups
