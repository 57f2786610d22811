"""The SQLite state store: every mutation persists, a reopened store sees the same state."""

from __future__ import annotations

from pathlib import Path

import pytest

from schooner.frontend.state import App, Conflict, Invalid, Model, NotFound, StateStore
from schooner.runtime.wire import InputType

D = InputType.DOUBLES


def test_persist_and_reload(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "state.db"
    s = StateStore.open(db)
    s.add_app(App("a", D, "0", 1000))
    s.add_app(App("gone", InputType.STRINGS, "x", 5))
    s.add_model(Model("m", "1", D, ["l1"], "img", "/p", -1))
    s.add_model(Model("m", "2", D, [], "img", "/p", 8))
    s.add_model(Model("other", "1", InputType.STRINGS))
    s.link("a", "m")
    s.set_model_version("m", "1")
    s.delete_app("gone")
    s.delete_model("other", "1")
    s.close()

    r = StateStore.open(db)
    try:
        assert list(r.apps) == ["a"]
        app = r.apps["a"]
        assert (app.input_type, app.default_output, app.latency_slo_micros) == (D, "0", 1000)
        assert app.linked_model == "m"
        assert r.current == {"m": "1"}
        assert sorted(r.models) == [("m", "1"), ("m", "2")]
        assert r.model("m", "1").labels == ["l1"] and r.model("m", "2").batch_size == 8
        r.add_model(Model("m", "3", D))  # sequence continues after a reload
        assert [m.version for m in r.versions("m")] == ["1", "2", "3"]
        assert r.current["m"] == "3"
    finally:
        r.close()


def test_deleting_the_current_version_falls_back_to_the_newest(tmp_path: Path) -> None:
    s = StateStore.open(tmp_path / "s.db")
    try:
        s.add_model(Model("m", "1", D))
        s.add_model(Model("m", "2", D))
        s.delete_model("m", "2")
        assert s.current["m"] == "1"
        s.delete_model("m", "1")
        assert "m" not in s.current
    finally:
        s.close()


def test_errors_carry_http_statuses(tmp_path: Path) -> None:
    s = StateStore.open(tmp_path / "s.db")
    try:
        s.add_app(App("a", D, "0", 1000))
        with pytest.raises(Conflict) as c:
            s.add_app(App("a", D, "0", 1000))
        assert c.value.status == 409
        with pytest.raises(NotFound) as nf:
            s.app("nope")
        assert nf.value.status == 404
        with pytest.raises(NotFound):
            s.link("a", "missing")
        s.add_model(Model("strs", "1", InputType.STRINGS))
        with pytest.raises(Invalid, match="strings"):
            s.link("a", "strs")
        s.add_model(Model("m", "1", D))
        s.link("a", "m")
        s.link("a", "m")  # idempotent
        with pytest.raises(Conflict):
            s.add_model(Model("m", "1", D))
        with pytest.raises(Invalid):
            s.add_model(Model("m", "2", InputType.INTS))  # the linked app sends doubles
        with pytest.raises(Invalid):
            s.add_app(App("bad", D, "0", 0))
        s.unlink("a", "m")
        assert s.apps["a"].linked_model is None
    finally:
        s.close()


def test_query_ids_are_never_handed_out_twice_across_restarts(tmp_path: Path) -> None:
    from schooner.frontend.query_api import QueryIds

    path = tmp_path / "s.db"
    seen: set[int] = set()
    for _restart in range(3):
        store = StateStore.open(path)
        ids = QueryIds(store)
        for n in (1, 5, QueryIds.BLOCK, 3):  # a request larger than a block gets its own
            first = ids.take(n)
            block = set(range(first, first + n))
            assert not block & seen
            seen |= block
        store.close()


def test_on_overload_is_kept_with_the_app_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = StateStore.open(path)
    store.add_app(App("a", InputType.DOUBLES, "0", 1000))
    assert store.apps["a"].on_overload == "default"
    store.set_on_overload("a", "503")
    with pytest.raises(Invalid):
        store.set_on_overload("a", "drop")
    with pytest.raises(NotFound):
        store.set_on_overload("nope", "503")
    store.close()
    store = StateStore.open(path)
    assert store.apps["a"].on_overload == "503"
    assert store.apps["a"].to_dict()["on_overload"] == "503"
    store.delete_app("a")
    store.add_app(App("a", InputType.DOUBLES, "0", 1000))
    assert store.apps["a"].on_overload == "default"
    store.close()
