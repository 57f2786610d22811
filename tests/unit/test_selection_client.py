"""The selection verbs of ClipperConnection and of the ``schooner`` CLI: what each sends."""

from __future__ import annotations

import pytest
from test_admin_connection import FakeFrontend, RecordingManager

from schooner.admin import ClipperConnection, ClipperException
from schooner.admin.cli import build_parser, selection_call


@pytest.fixture
def fake():
    f = FakeFrontend()
    yield f
    f.close()


def test_connection_methods_send_the_management_operations(fake) -> None:
    conn = ClipperConnection(RecordingManager(fake.address))
    conn.connect()
    conn.set_traffic_split("digits", {"cnn:3": 90, "cnn:4": 10}, sticky_field="user")
    conn.set_shadow("digits", "cnn:5", fraction=0.5)
    conn.set_selection_policy("digits", "exp3", gamma=0.2)
    conn.set_selection_policy("digits", "ensemble", ["a:1", "b:1"], combine="vote")
    conn.set_prediction_cache("digits", size_mb=64)
    conn.set_shadow("digits", None)
    assert fake.calls == [
        ("/admin/set_traffic_split", {"name": "digits", "split": {"cnn:3": 90, "cnn:4": 10},
                                      "sticky_field": "user"}),
        ("/admin/set_shadow", {"name": "digits", "model": "cnn:5", "fraction": 0.5}),
        ("/admin/set_selection_policy", {"name": "digits", "policy": "exp3", "gamma": 0.2}),
        ("/admin/set_selection_policy", {"name": "digits", "policy": "ensemble",
                                         "models": ["a:1", "b:1"], "combine": "vote"}),
        ("/admin/set_prediction_cache", {"name": "digits", "size_mb": 64}),
        ("/admin/set_shadow", {"name": "digits", "model": None, "fraction": 1.0}),
    ]  # fmt: skip


def test_cli_verbs_make_the_same_calls() -> None:
    parse = build_parser().parse_args
    assert selection_call(parse(["split", "digits", "cnn:3=90", "cnn:4=10"])) == (
        "set_traffic_split", ["digits", {"cnn:3": 90.0, "cnn:4": 10.0}], {"sticky_field": None})
    assert selection_call(parse(["split", "d", "cnn:4", "--sticky-field", "user"])) == (
        "set_traffic_split", ["d", {"cnn:4": 1.0}], {"sticky_field": "user"})
    assert selection_call(parse(["shadow", "d", "cnn:5", "--fraction", "0.1"])) == (
        "set_shadow", ["d", "cnn:5"], {"fraction": 0.1})
    assert selection_call(parse(["shadow", "d"])) == ("set_shadow", ["d", None], {"fraction": 1.0})
    assert selection_call(parse(["policy", "d", "exp3", "--gamma", "0.2"])) == (
        "set_selection_policy", ["d", "exp3", None], {"gamma": 0.2})
    assert selection_call(parse(["policy", "d", "ensemble", "--model", "a:1", "--model", "b:1",
                                 "--combine", "vote"])) == (
        "set_selection_policy", ["d", "ensemble", {"a:1": 1.0, "b:1": 1.0}], {"combine": "vote"})
    assert selection_call(parse(["cache", "d", "64"])) == ("set_prediction_cache", ["d", 64.0], {})
    with pytest.raises(ClipperException, match="WEIGHT"):
        selection_call(parse(["split", "d", "cnn:3=lots"]))
    with pytest.raises(SystemExit):
        parse(["policy", "d", "greedy"])
