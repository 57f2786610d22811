"""Schooner query frontend: Clipper's REST API in front of Clipper RPC v3 containers.

One asyncio process (``python -m schooner.frontend``). The modules, in the order a query
meets them: ``http`` (the HTTP/1.1 server), ``query_api`` and ``inputs`` (``POST
/<app>/predict``), ``dispatch`` (model-version queues, replicas, deadlines) with the pure
policy of ``batching``, ``rpc`` (the ZeroMQ ROUTER containers connect to); beside them
``management_api`` and ``state`` (apps, models and links in SQLite), ``metrics`` and
``server``, which assembles everything.
"""
