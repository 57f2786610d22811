"""The peers: other serving systems, each run by the interpreter of the peers' own
environment (``python -m benchmarks.peers.<name> PORT MODEL MAX_BATCH WAIT_S``).

Every peer serves ``benchmarks.models.build(MODEL)`` with one worker, batching on, at most
``MAX_BATCH`` inputs per call and ``WAIT_S`` seconds of waiting for a batch to fill, behind
``POST /predict`` taking ``{"input": [...]}`` and answering ``{"output": ...}``. These modules
import nothing from Schooner.
"""
