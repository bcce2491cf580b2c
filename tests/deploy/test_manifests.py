"""Every deploy manifest parses, asks for enough GPUs and runs the real CLI with a real config."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from compo.cli.main import build_parser
from compo.config import TrainConfig
from compo.config_files import load_config
from workers.dispatch import chunk_length, make_chunks

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent
IMAGE_ROOT = "/app"  # WORKDIR of deploy/Dockerfile, where the repository is copied
COORDINATOR_GPUS = 1  # every launcher reserves one GPU for the coordinator (the rebuild)


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.fixture(scope="module")
def job() -> TrainConfig:
    return load_config(TrainConfig, DEPLOY / "job.yaml")


@pytest.fixture(scope="module")
def image() -> str:
    """The image tag the README tells users to build; every manifest must use it."""
    built = re.search(r"docker build -f deploy/Dockerfile -t (\S+) \.",
                      (DEPLOY / "README.md").read_text())
    assert built, "deploy/README.md shows the docker build command"
    return built.group(1)


def image_path(path: str) -> Path:
    """Where a path inside the image comes from in this repository."""
    assert path.startswith(IMAGE_ROOT + "/"), path
    return REPO / path.removeprefix(IMAGE_ROOT + "/")


def parse_train(argv: list[str]):
    args = build_parser().parse_args(argv)
    assert args.command == "train" and args.ray_address == "auto"
    return args


def test_job_config_is_a_valid_30_gpu_run(job):
    assert job.ray is not None and job.ray.num_workers >= 30 and job.ray.use_gpu is True
    assert job.model.device == "cuda" and job.checkpoint_every == 1
    workers, m = job.ray.num_workers, job.compo.num_perturbations
    assert len(make_chunks(range(m), chunk_length(job.ray.chunk_size, m, workers))) >= 2 * workers
    for path in (job.model.path, job.data.path, job.output_dir):
        assert path.startswith("/shared/"), "every node sees these on the shared volume"


def test_dockerfile_is_cuda_based_and_installs_the_project_with_ray():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-\S*runtime", text, re.M)
    assert f"WORKDIR {IMAGE_ROOT}" in text and 'pip install ".[ray]"' in text
    for package in ("compo", "workers", "deploy"):
        assert f"COPY {package} ./{package}" in text
    assert "--index-url" in text  # a CUDA torch build, installed before the project


def test_cluster_launcher_passes_rays_schema_and_has_the_gpus(job, image):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster.yaml")
    validate_config(prepare_config(config))  # what `ray up` does with it
    types = config["available_node_types"]
    worker_gpus = sum(t["resources"].get("GPU", 0) * t.get("min_workers", 0)
                      for name, t in types.items() if name != config["head_node_type"])
    head_gpus = types[config["head_node_type"]]["resources"].get("GPU", 0)
    assert worker_gpus >= job.ray.num_workers and head_gpus >= COORDINATOR_GPUS
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    assert config["docker"]["image"] == image


def kuberay_gpus(spec: dict, image: str) -> tuple[int, int]:
    """(head GPUs, worker GPUs) of a RayCluster spec; checks every container's image."""
    def gpus(template: dict) -> int:
        (container,) = template["spec"]["containers"]
        assert container["image"] == image
        limits = container["resources"]["limits"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/shared" in mounts
        return int(limits.get("nvidia.com/gpu", 0))

    head = gpus(spec["headGroupSpec"]["template"])
    workers = 0
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
        workers += group["replicas"] * gpus(group["template"])
    return head, workers


def test_kuberay_raycluster_asks_for_30_worker_gpus(job, image):
    cluster = load("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    head, workers = kuberay_gpus(cluster["spec"], image)
    assert workers == 30 == job.ray.num_workers and head == COORDINATOR_GPUS
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={cluster['spec']['rayVersion']}" in dockerfile


def test_kuberay_rayjob_runs_the_real_cli_on_the_same_cluster(job, image):
    ray_job = load("kuberay/rayjob.yaml")
    assert (ray_job["apiVersion"], ray_job["kind"]) == ("ray.io/v1", "RayJob")
    spec = ray_job["spec"]
    assert spec["rayClusterSpec"] == load("kuberay/raycluster.yaml")["spec"]
    assert spec["entrypointNumGpus"] == COORDINATOR_GPUS and spec["shutdownAfterJobFinishes"]
    program, *argv = shlex.split(spec["entrypoint"])
    assert program == "compo"
    args = parse_train(argv)
    assert load_config(TrainConfig, image_path(args.config)) == job
    claims = {v["persistentVolumeClaim"]["claimName"]
              for v in spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {load("kuberay/shared-pvc.yaml")["metadata"]["name"]}
    assert load("kuberay/shared-pvc.yaml")["spec"]["accessModes"] == ["ReadWriteMany"]


def sbatch_options(text: str) -> dict:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))


def test_slurm_script_starts_enough_gpus_and_submits_the_real_cli(job):
    path = DEPLOY / "slurm" / "compo.sbatch"
    text = path.read_text()
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    options = sbatch_options(text)
    gpus = int(options["nodes"]) * int(options["gpus-per-node"])
    values = dict(re.findall(r"^([A-Z_]+)=(\d+)$", text, re.M))
    assert int(values["GPUS_PER_NODE"]) == int(options["gpus-per-node"])
    assert int(values["WORKERS"]) == job.ray.num_workers
    assert gpus >= job.ray.num_workers + int(values["COORDINATOR_GPUS"])
    assert "ray start --head" in text and "ray start --block --address=" in text
    submit = re.search(r"ray job submit (.*?) -- \\\n\s*(compo train .*)", text, re.S)
    assert submit and "--entrypoint-num-gpus $COORDINATOR_GPUS" in submit.group(1)
    assert 'run=(--config "$CONFIG")' in text and 'run=(--resume "$RESUME")' in text
    assert "CONFIG=${CONFIG:-$SLURM_SUBMIT_DIR/deploy/job.yaml}" in text
    for run in ("--config deploy/job.yaml", "--resume /shared/runs/a-run"):
        program, *argv = shlex.split(submit.group(2).replace('"${run[@]}"', run))
        assert program == "compo"
        args = parse_train(argv)
        if args.config:
            assert load_config(TrainConfig, REPO / args.config) == job
        else:
            assert args.resume == "/shared/runs/a-run"


def test_every_manifest_parses_and_is_covered():
    manifests = sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*.yaml"))
    assert manifests == ["cluster.yaml", "job.yaml", "kuberay/raycluster.yaml",
                         "kuberay/rayjob.yaml", "kuberay/shared-pvc.yaml"]
    for name in manifests:
        assert isinstance(load(name), dict)


def test_readme_walks_through_each_launcher():
    text = (DEPLOY / "README.md").read_text()
    assert "## Launch on 30 GPUs" in text
    for needle in ("deploy/cluster.yaml", "deploy/kuberay/rayjob.yaml",
                   "deploy/kuberay/raycluster.yaml", "deploy/slurm/compo.sbatch",
                   "ray job submit", "--entrypoint-num-gpus 1", "--resume",
                   "bench/ray_scaling.py"):
        assert needle in text, needle
