"""How each peer is asked, and how its answer reads: the same input in each peer's own form.

Every system gets the same 256 floats (``benchmarks.models.body``); only the envelope each
server's API requires differs:

=========== ================================================= ============================
form        body                                              answer
=========== ================================================= ============================
``clipper`` ``{"input": [f, ...]}`` (Schooner, the floor,      ``{"output": "0"}``
            LitServe, Ray Serve, Mosec)
``oip``     ``{"inputs": [{"name": "input", "shape": [1, 256], ``{"outputs": [{..., "data":
            "datatype": "FP32", "data": [f, ...]}]}``          ["0"]}]}`` (first output;
            (Open Inference Protocol v2: MLServer, Triton,     a BYTES label, or an INT64
            Schooner's OIP path)                               one as Schooner types "0")
``row``     ``{"input": [[f, ...]]}``: the same floats as one  ``["0"]``
            row, because BentoML's batchable APIs take a
            batch per request and concatenate them
=========== ================================================= ============================

``answer(form, reply)`` returns the one label a reply carries, and raises ``ValueError`` for
anything else, so a peer that answers the wrong thing is caught before it is measured.
Imports nothing heavy (no torch, no numpy) and nothing from Schooner.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks import models

__all__ = ["FORMS", "body", "answer", "expected"]

FORMS = ("clipper", "oip", "row")


def body(form: str, features: int = models.FEATURES) -> bytes:
    """The request body of ``form`` carrying the one benchmark input."""
    if form == "clipper":
        return models.body(features)
    if form == "oip":
        return models.oip_body(features)
    if form == "row":
        row = models.body(features)[len(b'{"input":'):-1]
        return b'{"input":[%s]}' % row
    raise ValueError(f"unknown form {form!r}; one of {', '.join(FORMS)}")


def answer(form: str, reply: Any) -> str:
    """The label in ``reply`` (the decoded JSON answer to one ``body(form)``)."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; one of {', '.join(FORMS)}")
    try:
        if form == "clipper":
            labels = [reply["output"]]
        elif form == "oip":
            labels = _flat(reply["outputs"][0]["data"])
        else:
            labels = reply if isinstance(reply, list) else [None, None]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a {form} answer to one input: {_short(reply)}") from exc
    # An OIP server may type a numeric label (Schooner's OIP path answers "8" as INT64 8).
    typed = form == "oip" and len(labels) == 1 and type(labels[0]) is int
    if len(labels) != 1 or not (isinstance(labels[0], str) or typed):
        raise ValueError(f"not a {form} answer to one input: {_short(reply)}")
    return str(labels[0])


def expected(model: str, features: int = models.FEATURES) -> str:
    """What ``benchmarks.models.build(model)`` answers for the benchmark input, computed here."""
    row = json.loads(models.body(features))["input"]
    (label,) = models.build(model)([row])
    return label


def _flat(data: Any) -> list[Any]:
    """OIP ``data`` may be flat or nested by the tensor's shape (``[["0"]]`` for [1, 1])."""
    out: list[Any] = []
    for item in data:
        out.extend(_flat(item) if isinstance(item, list) else [item])
    return out


def _short(reply: Any, limit: int = 200) -> str:
    text = json.dumps(reply) if not isinstance(reply, str) else reply
    return text if len(text) <= limit else text[:limit] + "..."
