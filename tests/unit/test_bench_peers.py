"""The e2e suite's peers: each peer's body and answer (``benchmarks.peers.forms``), which
interpreter runs which peer, the table rows of a peer that is absent, and a peer that fails to
start (a real process that exits) being reported with its reason."""

import json
import re
import sys
from pathlib import Path

import pytest

from benchmarks import models
from benchmarks.e2e import Absent, Cell, one_line, peer_pythons, table, verdicts
from benchmarks.peers import forms
from benchmarks.systems import PEER_SPECS, PEERS, start_peer

ROOT = Path(__file__).resolve().parents[2]
ROW = json.loads(models.body())["input"]


def test_every_form_carries_the_same_input():
    assert len(ROW) == models.FEATURES
    clipper = json.loads(forms.body("clipper"))
    oip = json.loads(forms.body("oip"))
    row = json.loads(forms.body("row"))
    assert clipper == {"input": ROW}
    (tensor,) = oip["inputs"]
    assert tensor["shape"] == [1, models.FEATURES] and tensor["datatype"] == "FP32"
    assert tensor["data"] == ROW
    assert row == {"input": [ROW]}
    with pytest.raises(ValueError, match="unknown form"):
        forms.body("grpc")


@pytest.mark.parametrize(("form", "reply"), [
    ("clipper", {"output": "7"}),
    ("oip", {"model_name": "bench", "outputs": [
        {"name": "output", "datatype": "BYTES", "shape": [1], "data": ["7"]}]}),  # MLServer
    ("oip", {"model_name": "bench", "model_version": "1", "outputs": [
        {"name": "output", "datatype": "BYTES", "shape": [1, 1], "data": [["7"]]}]}),  # nested
    ("oip", {"model_name": "bench", "outputs": [  # Schooner types a numeric label
        {"name": "output", "datatype": "INT64", "shape": [1], "data": [7]},
        {"name": "default", "datatype": "BOOL", "shape": [1], "data": [False]}]}),
    ("row", ["7"]),
])  # fmt: skip
def test_answer_reads_each_peers_reply(form, reply):
    assert forms.answer(form, reply) == "7"


@pytest.mark.parametrize(("form", "reply"), [
    ("clipper", {"default": True, "output": None}),  # a default answer is not a label
    ("clipper", {"error": "overloaded"}),
    ("clipper", ["7"]),
    ("oip", {"outputs": []}),
    ("oip", {"outputs": [{"name": "output", "data": ["7", "7"]}]}),  # two labels for one input
    ("oip", {"error": "model not ready"}),
    ("row", ["7", "7"]),
    ("oip", {"outputs": [{"name": "output", "datatype": "BOOL", "data": [True]}]}),
    ("row", [7]),
    ("row", {"output": "7"}),
])  # fmt: skip
def test_answer_refuses_anything_but_one_label(form, reply):
    with pytest.raises(ValueError, match=f"not a {form} answer"):
        forms.answer(form, reply)
    with pytest.raises(ValueError, match="unknown form"):
        forms.answer("nope", {"output": "7"})


def test_expected_labels_are_what_the_models_answer():
    assert forms.expected("noop") == "0"
    pytest.importorskip("torch")
    import numpy as np

    label = forms.expected("mlp")
    assert label in {str(i) for i in range(10)}
    # The peers hand the model an array (MLServer, Triton, BentoML): the same label.
    assert models.build("mlp")(np.array([ROW], dtype=np.float32)) == [label]


def test_each_peer_runs_in_its_own_environment(tmp_path):
    pythons = peer_pythons("", tmp_path)
    assert set(pythons) == set(PEERS)
    for peer, python in pythons.items():
        assert python == str(tmp_path / PEER_SPECS[peer].env / "bin" / "python")
    envs = {PEER_SPECS[p].env for p in ("mosec", "mlserver", "bentoml", "triton")}
    assert len(envs) == 4 and "venv" not in envs  # none shares another's, nor LitServe's
    # A bare interpreter is LitServe's and Ray's (as before); PEER=PYTHON names one peer.
    pythons = peer_pythons("/opt/lr/bin/python,triton=/opt/t/bin/python", tmp_path)
    assert pythons["litserve"] == pythons["ray"] == "/opt/lr/bin/python"
    assert pythons["triton"] == "/opt/t/bin/python"
    assert pythons["mosec"] == str(tmp_path / "mosec-venv" / "bin" / "python")
    with pytest.raises(ValueError, match="unknown peer 'tritonserver'"):
        peer_pythons("tritonserver=/x", tmp_path)


def test_specs_scripts_and_setup_agree():
    setup = (ROOT / "benchmarks" / "peers" / "setup.sh").read_text()
    declared = dict(re.findall(r"^\s+\[([\w-]+)\]=\"([^\"]+)\"$", setup, re.M))
    assert set(declared) == {spec.env for spec in PEER_SPECS.values()}
    for packages in declared.values():  # every version pinned
        for requirement in packages.split():
            assert re.fullmatch(r"[\w.\[\]-]+(==[\w.]+|<[\w.]+)", requirement), requirement
    assert "torch==2.13.0" in setup
    for env, packages in declared.items():  # every other package held, and to the same pins
        lines = (ROOT / "benchmarks" / "peers" / "constraints" / f"{env}.txt").read_text()
        held = dict(re.findall(r"^([\w.-]+)==(\S+)$", lines, re.M))
        assert held and "torch" not in held  # torch comes from the CPU wheel, first
        for name, version in re.findall(r"([\w.-]+)(?:\[\w+\])?==([\w.]+)", packages):
            assert held[name] == version, (env, name)
    for peer, spec in PEER_SPECS.items():
        assert (ROOT / "benchmarks" / "peers" / f"{peer}.py").exists()
        assert spec.form in forms.FORMS
        assert spec.knobs.format(B=32, B4=128, W="5 ms")  # every placeholder is known


def test_absent_peers_get_a_row_with_the_reason():
    cell = Cell("noop", "floor", 64, 1000.0, 0.5, 1.0, 10.0, 0, [])
    out = table([cell], [Absent("noop", "mosec", "failed to start: exited with code 1"),
                         Absent("mlp", "triton", "not installed (no pytriton in /x)")])  # fmt: skip
    lines = out.splitlines()
    assert lines[2].startswith("| noop | 64 | floor | 1,000 |")
    assert lines[3] == "| noop |  | mosec | failed to start: exited with code 1 |  |  |  |  |  |  |"
    assert lines[4].startswith("| mlp |  | triton | not installed (no pytriton in /x) |")
    assert one_line(RuntimeError("first | line\nsecond")) == "first / line"


def test_verdicts_compare_schooner_with_each_peer_at_64_connections():
    def cell(model, system, rate, cpu):
        return Cell(model, system, 64, rate, 1.0, 2.0, cpu, 0, [])

    cells = [cell("noop", "schooner", 30_000, 30.0), cell("noop", "mosec", 10_000, 75.0),
             cell("noop", "triton", 2_000, 450.0), cell("mlp", "schooner", 18_000, 50.0),
             cell("mlp", "mosec", 7_500, 90.0), cell("mlp", "triton", 1_800, 450.0),
             cell("mlp", "schooner-oip", 9_000, 90.0)]  # fmt: skip
    assert verdicts(cells) == [
        "noop, 64 connections: Schooner 3.0x mosec's req/s (target >= 3: met); mosec spends "
        "2.5x as much server CPU per request",
        # no schooner-oip row for noop: Triton's OIP row against Clipper's path, said so
        "noop, 64 connections: Schooner (Clipper's path) 15.0x triton's req/s; triton spends "
        "15.0x as much server CPU per request",
        "mlp, 64 connections: Schooner 2.4x mosec's req/s (target >= 3: MISSED); mosec spends "
        "1.8x as much server CPU per request",
        "mlp, 64 connections: Schooner's OIP path 5.0x triton's req/s; triton spends 5.0x as "
        "much server CPU per request",
        "noop, 64 connections: Schooner's server CPU 30.0 µs per request (target <= 25: MISSED)",
    ]
    one = [Cell("noop", "schooner", 1, 5_000, 0.09, 0.2, 150.0, 0, []),
           Cell("noop", "floor", 1, 15_000, 0.03, 0.1, 25.0, 0, [])]  # fmt: skip
    assert verdicts(one) == ["noop, 1 connection: Schooner's p50 3.0x the floor's (target <= 3: met)"]


def test_a_peer_that_cannot_start_says_why(tmp_path):
    """Mosec's script under Schooner's own interpreter, which has no Mosec: the process
    really starts and really exits, and the reason's first line says so."""
    with pytest.raises(RuntimeError) as caught:
        start_peer("mosec", sys.executable, "noop", tmp_path, None, max_batch=32, wait_s=0.005,
                   timeout_s=60)  # fmt: skip
    reason = one_line(caught.value)
    assert "exited with code 1" in reason
    assert "No module named 'mosec'" in reason
