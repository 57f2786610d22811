"""The public surface: what a ported Clipper script imports and calls."""

import inspect

import schooner.admin
from schooner.admin import ClipperConnection
from schooner.admin.deployers import python as python_deployer
from schooner.runtime import errors, wire


def test_admin_exports():
    assert sorted(schooner.admin.__all__) == sorted(
        ["ClipperConnection", "ContainerManager", "LocalContainerManager", "DockerContainerManager",
         "KubernetesContainerManager", "ClipperException"]
    )
    for name in schooner.admin.__all__:
        assert hasattr(schooner.admin, name)


CLIPPER_METHODS = [
    "start_clipper", "connect", "register_application", "delete_application",
    "link_model_to_app", "unlink_model_from_app", "build_and_deploy_model", "build_model",
    "deploy_model", "register_model", "set_num_replicas", "get_num_replicas", "get_all_apps",
    "get_app_info", "get_linked_models", "get_all_models", "get_model_info",
    "get_all_model_replicas", "set_model_version", "stop_models", "stop_versioned_models",
    "stop_inactive_model_versions", "stop_all_model_containers", "stop_all", "get_query_addr",
    "get_metric_addr", "get_clipper_logs",
]  # fmt: skip


def test_clipper_connection_has_clippers_methods():
    missing = [m for m in CLIPPER_METHODS if not callable(getattr(ClipperConnection, m, None))]
    assert not missing


def test_deployer_signatures_match_clippers():
    params = list(inspect.signature(python_deployer.deploy_python_closure).parameters)
    assert params[:5] == ["clipper_conn", "name", "version", "input_type", "func"]
    for p in ("base_image", "labels", "registry", "num_replicas", "batch_size", "pkgs_to_install"):
        assert p in params
    sig = inspect.signature(python_deployer.create_endpoint)
    assert list(sig.parameters)[:4] == ["clipper_conn", "name", "input_type", "func"]
    assert sig.parameters["default_output"].default == "None"
    assert sig.parameters["slo_micros"].default == 3000000
    assert sig.parameters["registry"].default is None  # nothing is pushed unless asked


def test_error_tree():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.SchoonerError)
    assert issubclass(errors.IncompatibleArtifact, errors.ArtifactError)
    assert issubclass(errors.MissingExtra, errors.FrameworkError)
    assert issubclass(errors.WireError, ValueError)


def test_wire_exports_exist():
    for name in wire.__all__:
        assert hasattr(wire, name), name
