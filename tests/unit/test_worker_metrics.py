"""How the frontend workers' metrics become one exposition (``workers.merge``)."""

from prometheus_client.parser import text_string_to_metric_families

from schooner.frontend.workers import merge

WORKER = """# HELP schooner_frontend_predictions_total Queries answered, per app
# TYPE schooner_frontend_predictions_total counter
schooner_frontend_predictions_total{{app="a"}} {answered}
# HELP schooner_frontend_replicas Connected replicas, per model version
# TYPE schooner_frontend_replicas gauge
schooner_frontend_replicas{{model="m:1"}} {replicas}
# HELP schooner_frontend_batch_size Queries per batch
# TYPE schooner_frontend_batch_size histogram
schooner_frontend_batch_size_bucket{{le="1.0",model="m:1"}} {small}
schooner_frontend_batch_size_bucket{{le="+Inf",model="m:1"}} {answered}
schooner_frontend_batch_size_count{{model="m:1"}} {answered}
schooner_frontend_batch_size_sum{{model="m:1"}} {answered}
"""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_counters_and_histograms_are_summed_and_a_gauge_is_the_largest_workers():
    merged = _samples(merge({
        0: WORKER.format(answered=5, replicas=2, small=1),
        1: WORKER.format(answered=7, replicas=2, small=3),
        2: WORKER.format(answered=1, replicas=1, small=0),  # a replica that reaches worker 2 late
    }))  # fmt: skip
    assert merged[("schooner_frontend_predictions_total", (("app", "a"),))] == 13
    assert merged[("schooner_frontend_batch_size_bucket", (("le", "1.0"), ("model", "m:1")))] == 4
    assert merged[("schooner_frontend_batch_size_count", (("model", "m:1"),))] == 13
    # every replica serves every worker: two replicas, not five
    assert merged[("schooner_frontend_replicas", (("model", "m:1"),))] == 2
    workers = {labels: v for (name, labels), v in merged.items()
               if name == "schooner_frontend_worker_predictions_total"}  # fmt: skip
    assert workers == {(("worker", "0"),): 5, (("worker", "1"),): 7, (("worker", "2"),): 1}


def test_a_worker_whose_snapshot_does_not_parse_is_left_out():
    merged = _samples(merge({0: WORKER.format(answered=5, replicas=2, small=1),
                             1: "schooner_frontend_predictions_total{app=\"a\" 3"}))  # fmt: skip
    assert merged[("schooner_frontend_predictions_total", (("app", "a"),))] == 5
    assert merged[("schooner_frontend_replicas", (("model", "m:1"),))] == 2
