"""The peers: other serving systems, each run by the interpreter of its own environment
(``python -m benchmarks.peers.<name> PORT MODEL MAX_BATCH WAIT_S``; ``setup.sh`` makes the
environments, ``benchmarks.systems.PEER_SPECS`` says which is whose).

Every peer serves ``benchmarks.models.build(MODEL)`` with one worker, batching on, at most
``MAX_BATCH`` inputs per call and ``WAIT_S`` seconds of waiting for a batch to fill where it
has that knob, on 127.0.0.1:PORT, taking the benchmark input in the form its API requires
(``forms``: Clipper's ``{"input": [...]}``, the Open Inference Protocol's tensor, or one row).
These modules import nothing from Schooner.
"""
