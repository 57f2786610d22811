"""The parts of the Docker path that need no engine: Clipper's names, options, build contexts,
captured dependencies, and the direction of the admin side's imports."""

import ast
import inspect
import json
from pathlib import Path

import pytest

from schooner.admin import ClipperException, DockerContainerManager, packaging
from schooner.admin import dependencies as deps
from schooner.admin.managers import docker
from schooner.admin.managers.base import create_model_container_label, parse_model_container_label
from schooner.frameworks import closure

ROOT = Path(__file__).resolve().parents[2]


def test_clippers_module_paths_work_with_the_schooner_prefix():
    from schooner.admin.container_manager import CLIPPER_DOCKER_LABEL, CONTAINERLESS_MODEL_IMAGE
    from schooner.admin.docker.docker_container_manager import DockerContainerManager as Clippers

    assert Clippers is DockerContainerManager
    assert CLIPPER_DOCKER_LABEL == "ai.clipper.container.label"
    assert CONTAINERLESS_MODEL_IMAGE == "NO_CONTAINER"
    assert parse_model_container_label(create_model_container_label("m", "2")) == ("m", "2")


def test_the_constructor_takes_clippers_parameters_and_defaults_in_order():
    params = list(inspect.signature(DockerContainerManager).parameters.values())
    clipper = [
        ("cluster_name", "default-cluster"), ("docker_ip_address", "localhost"),
        ("use_centralized_log", False), ("fluentd_port", 24224), ("clipper_query_port", 1337),
        ("clipper_management_port", 1338), ("clipper_rpc_port", 7000), ("redis_ip", None),
        ("redis_port", 6379), ("prometheus_port", 9090), ("docker_network", "clipper_network"),
        ("extra_container_kwargs", None),
    ]
    assert [(p.name, p.default) for p in params[: len(clipper)]] == clipper
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[len(clipper):])
    assert DockerContainerManager().publish_address == "127.0.0.1"


def test_extra_container_kwargs_become_docker_run_options():
    options, env, labels = docker._container_options({
        "mem_limit": "1g", "cpuset_cpus": "0", "nano_cpus": 1_500_000_000, "read_only": True,
        "environment": {"A": "1"}, "labels": {"team": "x"},
    })
    assert options == ["--memory", "1g", "--cpuset-cpus", "0", "--cpus", "1.5", "--read-only"]
    assert env == {"A": "1"} and labels == {"team": "x"}
    with pytest.raises(ClipperException, match="privileged"):
        docker._container_options({"privileged": True})


def test_a_cuda_device_becomes_a_gpu_request():
    assert docker._gpu_request("cpu") is None
    assert docker._gpu_request("cuda") == "device=0"
    assert docker._gpu_request("cuda:3") == "device=3"
    with pytest.raises(Exception, match="cuda"):
        DockerContainerManager(device="gpu")


def test_a_model_context_bakes_the_artifact_in_and_installs_its_requirements(tmp_path):
    artifact = closure.save(lambda xs: list(xs), tmp_path / "a", pkgs_to_install=["einops==0.8.0"])
    pkg = packaging.package(artifact)
    assert pkg.base_image == "python" and pkg.requirements == ("einops==0.8.0",)
    context = packaging.model_context(pkg, "schooner/python:x", tmp_path / "ctx")
    dockerfile = (context / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM schooner/python:x\n")
    assert "pip install --no-input -r /opt/schooner/model-requirements.txt" in dockerfile
    assert dockerfile.rstrip().endswith("COPY model /model")
    assert (context / "model" / "func.pkl").is_file()
    same = packaging.model_context(pkg, "schooner/python:x", tmp_path / "ctx2")
    assert packaging.context_digest(context) == packaging.context_digest(same)
    assert packaging.context_digest(context) != packaging.context_digest(context, "other base")


def test_a_base_context_holds_sources_only(tmp_path):
    context = packaging.base_context("python", tmp_path / "ctx")
    assert (context / "Dockerfile").is_file() and (context / "wheels").is_dir()
    assert (context / "schooner" / "runtime" / "__main__.py").is_file()
    assert not list(context.rglob("__pycache__")) and not list(context.rglob("*.so"))


def test_captured_dependencies_are_pinned_and_the_users_pins_win(tmp_path):
    from importlib.metadata import version

    from packaging.version import Version

    def newest(xs):
        return [str(max(Version(s) for s in x.split(","))) for x in xs]

    assert "packaging" in deps.imported_modules(newest)
    assert deps.captured([newest], [], "python") == [f"packaging=={version('packaging')}"]
    assert deps.captured([newest], ["packaging>=20"], "python") == []
    assert deps.captured([lambda xs: [str(sum(x)) for x in xs]], [], "python") == []
    numpy_func = _uses_numpy()
    assert deps.captured([numpy_func], [], "python") == []  # the base image has numpy


def _uses_numpy():
    import numpy as np

    return lambda xs: [str(np.sum(x)) for x in xs]


def test_a_deployer_records_captured_dependencies_and_the_docker_package_installs_them(tmp_path):
    from packaging.version import Version

    from schooner.admin.deployers.deploy import record_captured

    def newest(xs):
        return [str(max(Version(s) for s in x.split(","))) for x in xs]

    artifact = closure.save(newest, tmp_path / "a")
    found = record_captured(artifact, [newest], None, "default")
    manifest = json.loads((artifact / "schooner.json").read_text())
    assert manifest["captured_requirements"] == found and found[0].startswith("packaging==")
    assert packaging.package(artifact, captured=True).requirements == tuple(found)
    assert packaging.package(artifact).requirements == ()


def _imports(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_imports_point_one_way_runtime_and_frontend_never_reach_the_admin_side():
    for folder in ("runtime", "frameworks", "frontend", "base_images"):
        assert not [m for m in _imports(folder) if m.startswith("schooner.admin")], folder


def test_what_managers_share_does_not_import_a_manager():
    shared = ["packaging.py", "images.py", "engine.py", "replicas.py", "dependencies.py",
              "connection.py", "management.py"]
    for name in shared:
        tree = ast.parse((ROOT / "admin" / name).read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not [m for m in modules if m.startswith("schooner.admin.managers.")
                    and m != "schooner.admin.managers.base"], name
    tree = ast.parse((ROOT / "admin/managers/docker.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [m for m in modules if m.startswith("schooner.admin.managers.local")]
