"""From queries to batches on replicas, and from responses back to queries.

One ``ModelQueue`` per model version holds its waiting queries, its batch sizer and its
connected replicas. Everything here runs on the event loop thread, called from three
places:

* the query API ``submit``s queries (and the queue is pumped at once: if a replica has
  nothing in flight, whatever is queued goes now, no waiting for a batch to fill; a replica
  that is busy gets a further batch, up to ``inflight_per_replica``, only when a full one
  waits -- ``pipeline_partial`` sends partial ones too);
* the RPC endpoint reports replicas that register (``add_replica``), answer
  (``on_response``) or are lost (``remove_replica``: their unanswered in-flight queries go
  back to the front of the queue for the other replicas);
* a timer calls ``sweep`` every few milliseconds while queries are pending, answering those
  past their deadline with the app's default output and the reason.

Admission control (the policy is ``batching.Admission``): a request is queued only if its
queries can be answered within their deadline behind the work already there, at the service
rate measured on this model's replicas, and, under sustained overload, only if it keeps the
queue short; otherwise each of its queries is answered at once with the default output and
the reason (``shed``), or, where the app asks for it, the request gets 503 with Retry-After.
A batch is cut only of queries that can still be answered in time. A model's queue holds at
most ``max_queued`` queries. A model with no replica connected answers at once (``no
replica``) unless replicas are expected: after the frontend starts, after a replica was
lost (``replica_grace_s``, for the supervisor's restart), or when a manager announced them
(``expect_replicas``). Queries whose client has gone (``cancel``) are dropped unanswered
wherever they wait, so nobody's work is done for a closed connection.

Every query is answered exactly once: ``Query.done`` is set by the first answer and every
later one (a late response, a second replica) is dropped.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from schooner.frontend.batching import Admission, BatchQueue, BatchSizer
from schooner.frontend.metrics import FrontendMetrics
from schooner.runtime import wire
from schooner.runtime.wire import CAP_PACKED, NewContainer, PredictResponse

__all__ = ["Query", "Replica", "ModelQueue", "Dispatcher", "Send"]

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]
Send = Callable[[bytes, Sequence[Any]], bool]  # (identity, frames) -> sent?

# Reasons for a default output, as they appear in the metrics.
SLO_MISSED = "slo_missed"
NO_REPLICA = "no_replica"
REPLICA_LOST = "replica_lost"
MODEL_ERROR = "model_error"
NO_MODEL = "no_model"
SHED = "shed"  # refused at admission: it could not have been answered in time


class Query:
    """One input of one request, from arrival to answer (``_fastpath.Query`` is the same in
    C, and is ``Query`` where the extension is built).

    ``on_done(query)`` is called once, when ``output`` (the model's text) or
    ``explanation`` (why the default output is used) is set.
    """

    __slots__ = (
        "id", "app", "data", "arrival", "deadline", "slo_micros", "on_done",
        "done", "output", "explanation", "reason", "lost", "model", "queued",
    )  # fmt: skip

    def __init__(
        self,
        query_id: int,
        app: str,
        data: bytes,
        arrival: float,
        slo_micros: int,
        on_done: Callable[[Query], None],
    ) -> None:
        self.id = query_id
        self.app = app
        self.data = data
        self.arrival = arrival
        self.deadline = arrival + slo_micros * 1e-6
        self.slo_micros = slo_micros
        self.on_done = on_done
        self.done = False
        self.output: str | None = None
        self.explanation: str | None = None
        self.reason: str | None = None  # why the default output was used (a metrics label)
        self.lost: str | None = None  # why a replica serving it was lost, if one was
        self.model: ModelQueue | None = None  # set when submitted
        self.queued = False  # waiting in its model's queue (not in flight)


_PyQuery = Query  # the definition; used as it is without a C compiler
_answer_all: Callable[..., None] | None
if not TYPE_CHECKING:
    try:  # the same in C (frontend/_fastpath.c): no interpreter frame to make or answer a query
        from schooner.frontend._fastpath import Query
        from schooner.frontend._fastpath import answer_all as _answer_all
    except ImportError:  # built without a C compiler
        _answer_all = None


class Replica:
    """A registered container connection."""

    __slots__ = (
        "identity", "queue", "replica_id", "input_type", "capabilities", "packed",
        "connected_at", "inflight", "last_answer",
    )  # fmt: skip

    def __init__(
        self, identity: bytes, queue: ModelQueue, replica_id: int, info: NewContainer
    ) -> None:
        self.identity = identity
        self.queue = queue
        self.replica_id = replica_id
        self.input_type = info.input_type
        self.capabilities = info.capabilities
        self.packed = bool(info.capabilities & CAP_PACKED)
        self.connected_at = time.time()
        self.inflight: dict[int, Batch] = {}
        self.last_answer = 0.0  # when its latest response arrived (clock of the dispatcher)

    def service_time(self, batch: Batch, now: float) -> float:
        """How long ``batch`` took on this replica, answered ``now``: from when it was sent
        or, if another batch was ahead of it there, from when that one was answered. The
        time spent waiting behind another batch says nothing about this batch's size."""
        started = batch.sent_at if batch.sent_at > self.last_answer else self.last_answer
        self.last_answer = now
        return now - started

    def describe(self) -> dict[str, object]:
        name, version = self.queue.key
        return {
            "model_name": name,
            "model_version": version,
            "replica_id": self.replica_id,
            "input_type": self.input_type.clipper_name,
            "capabilities": self.capabilities,
            "connected_at": self.connected_at,
            "inflight": len(self.inflight),
        }


class Batch:
    __slots__ = ("msg_id", "replica", "queries", "sent_at")

    def __init__(self, msg_id: int, replica: Replica, queries: list[Query], sent_at: float):
        self.msg_id = msg_id
        self.replica = replica
        self.queries = queries
        self.sent_at = sent_at


class ModelQueue:
    """Waiting queries, batch sizer and replicas of one model version."""

    __slots__ = (
        "key", "label", "queue", "sizer", "admission", "replicas", "_replica_ids",
        "slo_micros", "stale", "inflight_queries", "expect_until", "pump_due",
    )  # fmt: skip

    def __init__(self, key: ModelKey, fixed_batch_size: int, slo_micros: int) -> None:
        self.key = key
        self.label = f"{key[0]}:{key[1]}"
        self.queue: BatchQueue[Query] = BatchQueue()
        self.sizer = BatchSizer(slo_micros, fixed=fixed_batch_size)
        self.admission = Admission()
        self.slo_micros = slo_micros
        self.replicas: list[Replica] = []
        self._replica_ids = itertools.count()
        self.stale = 0  # queries in ``queue`` already answered or cancelled
        self.inflight_queries = 0
        self.expect_until = 0.0  # replicas are expected until then (dispatcher clock)
        self.pump_due = False  # a deferred pump is scheduled (Dispatcher.defer)

    @property
    def waiting(self) -> int:
        """Queries in the queue that still wait for an answer."""
        return len(self.queue) - self.stale

    def next_replica_id(self) -> int:
        return next(self._replica_ids)


class Dispatcher:
    """Owns every model queue and replica. See the module docstring for who calls what."""

    def __init__(
        self,
        send: Send,
        metrics: FrontendMetrics,
        *,
        inflight_per_replica: int = 2,
        pipeline_partial: bool = False,
        default_slo_micros: int = 100_000,
        stale_batch_s: float = 30.0,
        max_queued: int = 100_000,
        replica_grace_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._metrics = metrics
        self.inflight_per_replica = max(1, inflight_per_replica)
        # A batch beyond the first in flight on a replica: cut only when full (False), or of
        # whatever waits (True)
        self.pipeline_partial = pipeline_partial
        self.max_queued = max(1, max_queued)
        self.replica_grace_s = replica_grace_s
        self._default_slo = default_slo_micros
        self._stale_batch_s = stale_batch_s
        self._clock = clock
        self.queues: dict[ModelKey, ModelQueue] = {}
        self.replicas: dict[bytes, Replica] = {}
        self._fixed: dict[ModelKey, int] = {}
        self._inflight: dict[int, Batch] = {}
        self._msg_ids = itertools.count(1)
        # Unanswered queries by SLO: equal SLOs mean deadlines in arrival order, so a sweep
        # only looks at the heads of these deques.
        self._pending: dict[int, deque[Query]] = {}
        # Hooks set by the server: arm the deadline sweep; tell the RPC endpoint that a
        # replica was dropped here (so that, if it is alive after all, it registers again).
        # ``on_pending`` is called when a line of pending queries goes from empty to not
        # (before the queries are added): it must arm a timer that calls ``sweep`` later,
        # not sweep now, and that timer must arm itself again while ``has_pending``, since
        # later submits to a line that is not empty do not call it.
        self.on_pending: Callable[[], None] = lambda: None
        self.on_unreachable: Callable[[bytes], None] = lambda identity: None
        # Set by the server to the event loop's ``call_soon``: a submit then sends no batch
        # itself but schedules one pump for after every request this loop iteration read,
        # so the queries that arrived together leave together (None: pump at once).
        self.defer: Callable[[Callable[[], None]], object] | None = None

    # ----------------------------------------------------------------- configuration

    def configure_model(self, key: ModelKey, batch_size: int) -> None:
        """A model version's batch size: > 0 fixed, otherwise adaptive."""
        fixed = batch_size if batch_size > 0 else 0
        self._fixed[key] = fixed
        mq = self.queues.get(key)
        if mq is not None:
            mq.sizer.fixed = fixed

    def expect_replicas(self, key: ModelKey, seconds: float) -> None:
        """Replicas of ``key`` are starting: queue its queries (up to their SLO) for
        ``seconds`` instead of answering "no replica" at once (0: they are not coming)."""
        self.queue(key).expect_until = self._clock() + max(0.0, seconds)

    def queue(self, key: ModelKey, slo_micros: int | None = None) -> ModelQueue:
        mq = self.queues.get(key)
        if mq is None:
            slo = slo_micros or self._default_slo
            mq = self.queues[key] = ModelQueue(key, self._fixed.get(key, 0), slo)
        return mq

    @property
    def has_pending(self) -> bool:
        return any(self._pending.values())

    # ----------------------------------------------------------------- queries in

    def submit(self, queries: Sequence[Query], key: ModelKey, slo_micros: int) -> None:
        """Queue the queries of one request of one app for model version ``key`` and
        dispatch what can go, or answer them at once when they cannot be served in time."""
        mq = self.queues.get(key) or self.queue(key, slo_micros)
        if mq.slo_micros != slo_micros:
            mq.slo_micros = slo_micros
            mq.sizer.set_slo(slo_micros)
        if not queries:
            return
        now = self._clock()
        n = len(queries)
        replicas = len(mq.replicas)
        waiting = len(mq.queue) - mq.stale  # mq.waiting
        if replicas == 0:
            if now >= mq.expect_until:
                explanation = f"no replica of model {mq.label} is connected"
                for q in queries:
                    q.model = mq
                    self.answer_default(q, NO_REPLICA, explanation)
                return
            if waiting + n > self.max_queued:  # replicas are coming; the bound holds meanwhile
                self._shed(mq, queries, now)
                return
        elif waiting + n > self.max_queued or not mq.admission.admits(
            waiting + mq.inflight_queries, n, replicas, queries[-1].deadline - now, now
        ):
            self._shed(mq, queries, now)
            return
        pending = self._pending.get(slo_micros)
        if pending is None:
            pending = self._pending[slo_micros] = deque()
        if not pending:  # else the sweep is armed already: it re-arms while any is pending
            self.on_pending()
        for q in queries:
            q.model = mq
            q.queued = True
            mq.queue.push(q)
            pending.append(q)
        if replicas:
            if self.defer is None:
                self._pump(mq)
            elif not mq.pump_due:
                mq.pump_due = True
                self.defer(lambda: self._deferred_pump(mq))

    def _deferred_pump(self, mq: ModelQueue) -> None:
        mq.pump_due = False
        if mq.queue:
            self._pump(mq)

    def _shed(self, mq: ModelQueue, queries: Sequence[Query], now: float) -> None:
        if mq.waiting + len(queries) > self.max_queued:
            explanation = (
                f"overloaded: model {mq.label} already has {mq.waiting} queries waiting "
                f"(at most {self.max_queued})"
            )
        else:
            wait_ms = mq.admission.wait(
                mq.waiting + mq.inflight_queries, len(queries), len(mq.replicas)
            ) * 1e3
            explanation = (
                f"overloaded: model {mq.label} would answer in about {wait_ms:.0f} ms, "
                f"beyond the latency SLO of {queries[-1].slo_micros} us"
                if not mq.admission.overloaded
                else f"overloaded: model {mq.label} is over capacity (queue delay held "
                f"under {mq.admission.target * 1e3:.0f} ms)"
            )
        for q in queries:
            q.model = mq
            self.answer_default(q, SHED, explanation)

    def retry_after(self, key: ModelKey) -> int:
        """Whole seconds a refused client should wait before trying again (Retry-After)."""
        mq = self.queues.get(key)
        if mq is None or not mq.replicas:
            return 1
        wait = mq.admission.wait(mq.waiting + mq.inflight_queries, 0, len(mq.replicas))
        return max(1, int(wait + 0.999))

    def cancel(self, queries: Iterable[Query]) -> None:
        """The client of these queries has gone: drop them, unanswered, wherever they wait
        (a batch already sent finishes on its replica; its answers are discarded)."""
        count = 0
        for q in queries:
            if q.done:
                continue
            q.done = True
            count += 1
            mq = q.model
            if q.queued and mq is not None:
                mq.stale += 1
        if count:
            self._metrics.cancelled(count)

    def answer_default(self, query: Query, reason: str, explanation: str) -> None:
        """Answer with the app's default output (the caller renders it) and why."""
        if query.done:
            return
        query.done = True
        if query.queued and query.model is not None:
            query.model.stale += 1
        query.explanation = explanation
        query.reason = reason
        self._metrics.answered(query.app, self._clock() - query.arrival, reason)
        query.on_done(query)

    def answer(self, query: Query, output: str) -> None:
        """Answer with a model's ``output`` found without a replica (the prediction cache, an
        ensemble's combination); counted like any answer."""
        if not query.done:
            self._answer(query, output, self._clock())

    def _answer(self, query: Query, output: str, now: float) -> None:
        query.done = True
        query.output = output
        self._metrics.answered(query.app, now - query.arrival, None)
        query.on_done(query)

    # ----------------------------------------------------------------- batches out

    def _pump(self, mq: ModelQueue) -> None:
        """Send batches while the queue has live queries and some replica has room."""
        queue, replicas, limit = mq.queue, mq.replicas, self.inflight_per_replica
        now = self._clock()
        while queue and replicas:
            best = replicas[0]
            if len(replicas) > 1:
                for r in replicas:
                    if len(r.inflight) < len(best.inflight):
                        best = r
            if len(best.inflight) >= limit:
                return
            waiting = len(queue) - mq.stale  # mq.waiting
            if best.inflight and not self.pipeline_partial and waiting < mq.sizer.size:
                return  # not a full batch: it waits for the replica's batch to come back
            batch, expired, skipped = queue.pop_batch(
                mq.sizer.size, mq.admission.cutoff(now, idle=not best.inflight)
            )
            mq.stale -= skipped
            for q in expired:
                q.queued = False
                self._expire(q)
            if batch:
                for q in batch:
                    q.queued = False
                mq.admission.dequeued(now - batch[0].arrival, now)
                self._send_batch(mq, best, batch, now)

    def _send_batch(
        self, mq: ModelQueue, replica: Replica, queries: list[Query], now: float
    ) -> None:
        msg_id = next(self._msg_ids) & 0xFFFFFFFF
        if replica.packed:
            frames = wire.encode_packed_request(
                msg_id, replica.input_type, [len(q.data) for q in queries],
                b"".join([q.data for q in queries]),
            )  # fmt: skip
        else:
            frames = wire.encode_predict_request(
                msg_id, replica.input_type, [q.data for q in queries]
            )
        batch = Batch(msg_id, replica, queries, now)
        replica.inflight[msg_id] = batch
        self._inflight[msg_id] = batch
        mq.inflight_queries += len(queries)
        self._metrics.batch(mq.label, len(queries))
        if not self._send(replica.identity, frames):
            self.remove_replica(replica.identity, "it could not be reached", pump=False)
            self.on_unreachable(replica.identity)

    # ----------------------------------------------------------------- replicas

    def add_replica(self, identity: bytes, info: NewContainer) -> Replica:
        """Register a container that sent NewContainer; it takes queued work at once."""
        mq = self.queue((info.name, info.version))
        replica = Replica(identity, mq, mq.next_replica_id(), info)
        mq.replicas.append(replica)
        self.replicas[identity] = replica
        self._metrics.replicas(mq.label, len(mq.replicas))
        log.info(
            "replica %d of model %s registered (input %s, capabilities %d, identity %s)",
            replica.replica_id, mq.label, info.input_type.clipper_name, info.capabilities,
            identity.hex(),
        )  # fmt: skip
        self._pump(mq)
        return replica

    def remove_replica(self, identity: bytes, reason: str, *, pump: bool = True) -> None:
        """Forget a replica; its unanswered in-flight queries go back to the queue's front."""
        replica = self.replicas.pop(identity, None)
        if replica is None:
            return
        mq = replica.queue
        mq.replicas.remove(replica)
        if not mq.replicas:  # its supervisor is likely restarting it
            mq.expect_until = max(mq.expect_until, self._clock() + self.replica_grace_s)
        requeue: list[Query] = []
        for msg_id, batch in replica.inflight.items():
            self._inflight.pop(msg_id, None)
            mq.inflight_queries -= len(batch.queries)
            for q in batch.queries:
                if not q.done:
                    q.lost = f"replica {replica.replica_id} of model {mq.label} was lost ({reason})"
                    q.queued = True
                    requeue.append(q)
        replica.inflight.clear()
        mq.queue.push_front(requeue)
        self._metrics.replicas(mq.label, len(mq.replicas))
        log.log(
            logging.WARNING if requeue else logging.INFO,
            "replica %d of model %s removed: %s; %d queries re-queued",
            replica.replica_id, mq.label, reason, len(requeue),
        )  # fmt: skip
        if pump:
            self._pump(mq)

    # ----------------------------------------------------------------- responses in

    def on_response(self, identity: bytes, response: PredictResponse) -> None:
        """Complete the queries of the batch this response answers."""
        msg_id = response.id
        batch = self._inflight.get(msg_id)
        if batch is None or batch.replica.identity != identity:
            log.debug("ignoring a response to unknown message %d", msg_id)
            return
        del self._inflight[msg_id]
        replica = batch.replica
        del replica.inflight[msg_id]
        mq = replica.queue
        now = self._clock()
        queries = batch.queries
        mq.inflight_queries -= len(queries)
        service_time = replica.service_time(batch, now)
        mq.sizer.observe(len(queries), service_time, mq.waiting)
        mq.admission.observe(len(queries), service_time)
        texts = response.texts()
        if len(texts) != len(queries):
            explanation = (
                f"model {mq.label} returned {len(texts)} outputs for a batch of {len(queries)}"
            )
            log.warning("replica %d: %s", replica.replica_id, explanation)
            for q in queries:
                self.answer_default(q, MODEL_ERROR, explanation)
        else:
            def model_failed(q: Query, text: str) -> None:
                self.answer_default(q, MODEL_ERROR, f"model {mq.label} failed: {text}")

            if _answer_all is not None:  # the loops below in C: no interpreter frame per query
                _answer_all(queries, texts, now, self._metrics.answered_many, response.status,
                            model_failed)  # fmt: skip
            elif response.status is None:
                for q, text in zip(queries, texts):
                    if not q.done:
                        self._answer(q, text, now)
            else:
                for q, text, failed in zip(queries, texts, response.error_flags()):
                    if q.done:
                        continue
                    if failed:
                        model_failed(q, text)
                    else:
                        self._answer(q, text, now)
        if mq.queue:
            self._pump(mq)

    # ----------------------------------------------------------------- deadlines

    def sweep(self) -> None:
        """Answer every query past its deadline with the default output (runs on a timer)."""
        now = self._clock()
        for pending in self._pending.values():
            while pending:
                q = pending[0]
                if q.done:
                    pending.popleft()
                elif q.deadline <= now:
                    pending.popleft()
                    self._expire(q)
                else:
                    break
        for mq in self.queues.values():
            if not mq.replicas and mq.queue:
                mq.stale -= mq.queue.drop_answered()

    def reap_stale_batches(self) -> None:
        """Free in-flight slots held by batches whose queries were all answered long ago.

        A container that never answers a batch would otherwise keep the slot forever.
        Runs with the replica-silence check (every few seconds).
        """
        cutoff = self._clock() - self._stale_batch_s
        for msg_id, batch in list(self._inflight.items()):
            if batch.sent_at < cutoff and all(q.done for q in batch.queries):
                del self._inflight[msg_id]
                batch.replica.inflight.pop(msg_id, None)
                batch.replica.queue.inflight_queries -= len(batch.queries)
                log.warning(
                    "replica %d of model %s never answered batch %d; slot freed",
                    batch.replica.replica_id, batch.replica.queue.label, msg_id,
                )  # fmt: skip
                if batch.replica.queue.queue:
                    self._pump(batch.replica.queue)

    def _expire(self, q: Query) -> None:
        if q.done:
            return
        mq = q.model
        label = mq.label if mq is not None else "?"
        if q.lost is not None:
            self.answer_default(
                q, REPLICA_LOST,
                f"{q.lost} and no other replica answered within the latency SLO of "
                f"{q.slo_micros} us",
            )  # fmt: skip
        elif mq is None or not mq.replicas:
            self.answer_default(q, NO_REPLICA, f"no replica of model {label} is connected")
        else:
            self.answer_default(
                q, SLO_MISSED,
                f"the latency SLO of {q.slo_micros} us was missed: model {label} did not "
                "answer in time",
            )  # fmt: skip
