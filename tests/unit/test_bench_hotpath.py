"""``python -m benchmarks hotpath``'s Clipper option: its argument, the model it writes for
Clipper's container, the stand-in for Clipper's metrics module, and the plain-path table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cloudpickle
import pytest

from benchmarks import hot_path as hp
from schooner.frameworks import closure

CLIPPER_CACHE = Path.home() / ".cache" / "schooner" / "clipper"


def test_clipper_rpc_must_be_a_folder_holding_rpc_py(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a folder"):
        hp.clipper_rpc_dir(str(tmp_path / "missing"))
    with pytest.raises(argparse.ArgumentTypeError, match="holds no rpc.py"):
        hp.clipper_rpc_dir(str(tmp_path))
    (tmp_path / "rpc.py").write_text("# Clipper's, fetched by the user\n")
    assert hp.clipper_rpc_dir(str(tmp_path)) == tmp_path.resolve()


def test_a_bad_clipper_rpc_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        hp.main(["--clipper-rpc", str(tmp_path)])
    assert exc.value.code == 2
    assert "holds no rpc.py" in capsys.readouterr().err


def test_the_clipper_server_needs_its_model(tmp_path: Path, capsys) -> None:
    (tmp_path / "rpc.py").write_text("")
    with pytest.raises(SystemExit) as exc:
        hp.main(["--clipper-server", "7000", "--clipper-rpc", str(tmp_path)])
    assert exc.value.code == 2
    assert "--clipper-model" in capsys.readouterr().err


def test_clipper_model_is_a_cloudpickled_func_pkl(tmp_path: Path) -> None:
    folder = hp.save_clipper_model(hp.noop, tmp_path / "m")
    func = cloudpickle.loads((folder / "func.pkl").read_bytes())
    assert func([1, 2, 3]) == ["0", "0", "0"]


def test_metrics_shim_stands_in_only_when_clipper_admin_is_absent(monkeypatch) -> None:
    for name in ("clipper_admin", "clipper_admin.metrics"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "clipper_admin" not in p])
    hp._clipper_metrics_shim()
    import clipper_admin.metrics as metrics  # the stand-in

    with pytest.raises(RuntimeError, match="metrics are off"):
        metrics.report_metric("clipper_mc_pred_total", 1)
    for name in ("clipper_admin", "clipper_admin.metrics"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def _row(server: str, batch: int, inflight: int, rate: float, placement: str = "pinned",
         cpu: float = 1.0) -> hp.Row:  # fmt: skip
    return hp.Row(server, "plain", batch, inflight, rate, rate * batch, [rate],
                  cpu_us_per_input=cpu, placement=placement)  # fmt: skip


def test_plain_path_table_ratios_and_verdicts() -> None:
    rows = [
        _row("echo", 1, 1, 9000), _row("schooner", 1, 1, 9000), _row("clipper", 1, 1, 6000),
        _row("echo", 64, 4, 3000), _row("schooner", 64, 4, 4000), _row("clipper", 64, 4, 4000),
        _row("echo", 1, 1, 8000, "floating"), _row("schooner", 1, 1, 8000, "floating"),
    ]  # fmt: skip
    text, verdicts = hp.plain_path_table(rows)
    assert "| pinned | 1 | 1 | 9,000 | 9,000 | 6,000 | 1.50x | 1.00 |" in text
    assert "| pinned | 64 | 4 | 3,000 | 4,000 | 4,000 | 1.00x | 1.33 |" in text
    assert "| floating | 1 | 1 | 8,000 | 8,000 | — | — | 1.00 |" in text  # Clipper not run
    assert verdicts == [
        "- plain v3, batch 1, 1 in flight, pinned: Schooner 1.50x Clipper's container "
        "(target >= 1.5: met)",
        "- plain v3, batch 64, 4 in flight, pinned: Schooner 1.00x Clipper's container "
        "(target >= 1.5: MISSED)",
    ]


def test_plain_path_table_with_a_busy_polling_container() -> None:
    rows = [
        _row("echo", 1, 1, 9000), _row("schooner", 1, 1, 9000), _row("clipper", 1, 1, 6000),
        _row("schooner-poll", 1, 1, 15000, cpu=2.0),
    ]  # fmt: skip
    text, verdicts = hp.plain_path_table(rows)
    assert "busy-polling / Clipper" in text.splitlines()[0]
    assert text.splitlines()[2].endswith("| 15,000 | 2.50x | 2.0 |")
    assert verdicts == [
        "- plain v3, batch 1, 1 in flight, pinned: Schooner 1.50x Clipper's container "
        "(target >= 1.5: met)",
        "- plain v3, batch 1, 1 in flight, pinned: Schooner busy-polling (opt-in) 2.50x "
        "Clipper's container (target >= 1.5: met)",
    ]
    plain, _ = hp.plain_path_table(rows[:3])  # not measured: no such columns
    assert "busy-polling" not in plain


def test_plain_path_table_with_the_python_floor() -> None:
    rows = [
        _row("echo", 1, 1, 9000), _row("floor", 1, 1, 12000, cpu=0.5), _row("schooner", 1, 1, 9000),
        _row("clipper", 1, 1, 6000), _row("schooner-poll", 1, 1, 15000, cpu=2.0),
    ]  # fmt: skip
    text, verdicts = hp.plain_path_table(rows)
    head, _, row = text.splitlines()
    assert head.endswith("| Python floor batches/s | Schooner / floor | floor µs CPU/input "
                         "| busy-polling batches/s | busy-polling / Clipper | busy-polling µs CPU/input |")  # fmt: skip
    assert row.endswith("| 12,000 | 0.75 | 0.5 | 15,000 | 2.50x | 2.0 |")
    assert len(verdicts) == 2  # the floor has no target line


@pytest.mark.parametrize("driver", ["zmtp", "pyzmq"])
def test_python_floor_answers_both_drivers(tmp_path: Path, driver: str) -> None:
    for batch, inflight in hp.PLAIN_PATH:
        row = hp.measure("floor", "plain", hp.Payload(batch), inflight, 100, 1, tmp_path, None,
                         driver=driver)  # fmt: skip
        assert row.server == "floor" and row.batches_per_s > 0


def test_busy_polling_container_answers_the_driver(tmp_path: Path) -> None:
    artifact = closure.save(hp.noop, tmp_path / "noop")
    row = hp.measure("schooner-poll", "plain", hp.Payload(1), 1, 200, 1, artifact, None,
                     driver="zmtp", busy_poll_us=100)  # fmt: skip
    assert row.server == "schooner-poll" and row.batches_per_s > 0


def test_cpu_seconds_of_this_process_grows() -> None:
    before = hp.cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    assert hp.cpu_seconds(os.getpid()) > before > 0


@pytest.mark.skipif(not (CLIPPER_CACHE / "rpc.py").is_file(),
                    reason=f"Clipper's rpc.py is not fetched into {CLIPPER_CACHE}")  # fmt: skip
def test_clipper_container_answers_the_driver(tmp_path: Path) -> None:
    clipper = hp.Clipper(CLIPPER_CACHE, hp.save_clipper_model(hp.noop, tmp_path / "c"))
    for batch, inflight in hp.PLAIN_PATH:
        row = hp.measure("clipper", "plain", hp.Payload(batch), inflight, 50, 1, tmp_path, None,
                         clipper)  # fmt: skip
        assert row.server == "clipper" and row.batches_per_s > 0 and row.placement == "floating"
