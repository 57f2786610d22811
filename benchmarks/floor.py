"""The floor: the least a Python process can do per HTTP request.

A bare ``asyncio.Protocol`` on uvloop (as Schooner's frontend runs when uvloop is
installed): find the end of the headers, read ``Content-Length`` bytes of body, write a
constant JSON answer. No HTTP parser library, no routing, no framework. With a model other
than ``noop`` it also decodes the JSON body and calls the model on that one input inline
(no batching): the least a Python server can do to answer with that model.

    python -m benchmarks.floor PORT [MODEL]     # serves until SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

_ANSWER = b'{"output":0}'
_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
             % (len(_ANSWER), _ANSWER))  # fmt: skip


class FloorProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 requests in, one constant (or model) answer per request out."""

    __slots__ = ("transport", "buffer", "model")

    def __init__(self, model: Any = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.model = model

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            start = buf.find(b"ontent-Length:", 0, end)
            if start < 0:
                start = buf.find(b"ontent-length:", 0, end)
            length = 0
            if start >= 0:
                line_end = buf.find(b"\r\n", start)
                length = int(buf[start + 14 : line_end])
            total = end + 4 + length
            if len(buf) < total:
                break
            if self.model is None:
                out.append(_RESPONSE)
            else:
                out.append(self._predict(buf[end + 4 : total]))
            buf = buf[total:]
        self.buffer = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _predict(self, body: bytes) -> bytes:
        import orjson

        answer = orjson.dumps({"output": self.model([orjson.loads(body)["input"]])[0]})
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(answer), answer))  # fmt: skip


async def serve(port: int, model_name: str) -> None:
    model = None
    if model_name != "noop":
        from benchmarks.models import build

        model = build(model_name)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(model), "127.0.0.1", port,
                                      backlog=1024, reuse_address=True)  # fmt: skip
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGINT, stopped.set)
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    port, model_name = int(args[0]), (args[1] if len(args) > 1 else "noop")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, model_name))
    else:
        uvloop.run(serve(port, model_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
