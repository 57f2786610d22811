"""From request frames to the batch a framework sees, and from its outputs back to bytes.

Inputs are decoded without needless copies: a packed request whose inputs all have the
same size becomes one 2-D array that is a view of the received frame; plain v3 frames of
equal size are joined once into one 2-D array (or viewed directly when there is only one);
inputs of different sizes become a list of 1-D views. Strings are decoded from UTF-8;
bytes inputs are ``int8`` arrays, as Clipper's Python containers gave them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from schooner.runtime.errors import PredictionError
from schooner.runtime.wire import DTYPES, Buffer, InputType, PredictRequest

__all__ = ["items_of", "assemble", "encode_outputs", "error_text"]


def items_of(request: PredictRequest) -> list[Buffer]:
    """One buffer per input of a request (views into a packed payload, not copies)."""
    if request.inputs is not None:
        return request.inputs
    view = memoryview(request.payload)  # type: ignore[arg-type]
    items, pos = [], 0
    for size in request.sizes:
        items.append(view[pos : pos + size])
        pos += size
    return items


def _check_sizes(sizes: Sequence[int], itemsize: int, input_type: InputType) -> None:
    for size in set(sizes) if len(sizes) > 1 else sizes:  # each distinct size once
        if size % itemsize:
            break
    else:
        return
    for i, size in enumerate(sizes):
        if size % itemsize:
            raise PredictionError(
                f"input {i} is {size} bytes, not a whole number of "
                f"{input_type.clipper_name} ({itemsize} bytes each)"
            )


def validate(request: PredictRequest, input_type: InputType) -> None:
    """Raise PredictionError if the request cannot be decoded as ``input_type``."""
    if request.input_type is not input_type:
        raise PredictionError(
            f"request carries {request.input_type.clipper_name}, this container serves "
            f"{input_type.clipper_name}"
        )
    dtype = DTYPES[input_type]
    if dtype is not None:
        _check_sizes(request.sizes, dtype.itemsize, input_type)
    else:
        for i, item in enumerate(items_of(request)):
            try:
                bytes(item).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PredictionError(f"input {i} is not valid UTF-8: {exc}") from None


def assemble(requests: Sequence[PredictRequest], input_type: InputType) -> Any:
    """The batch for ``requests`` (already validated), in order."""
    dtype = DTYPES[input_type]
    if dtype is None:
        return [bytes(item).decode("utf-8") for r in requests for item in items_of(r)]
    if len(requests) == 1:
        request = requests[0]
        sizes = request.sizes
        if len(sizes) == 1:
            item = request.payload if request.inputs is None else request.inputs[0]
            return np.frombuffer(item, dtype)[None]  # type: ignore[arg-type]
        if sizes and min(sizes) == max(sizes):
            if request.payload is not None:
                return np.frombuffer(request.payload, dtype).reshape(len(sizes), -1)
            inputs = request.inputs
            assert inputs is not None
            return np.frombuffer(b"".join(inputs), dtype).reshape(len(sizes), -1)
    items = [item for r in requests for item in items_of(r)]
    sizes = [len(item) for item in items]
    if sizes and min(sizes) == max(sizes):
        return np.frombuffer(b"".join(items), dtype).reshape(len(items), -1)
    return [np.frombuffer(item, dtype) for item in items]


def encode_outputs(outputs: Any, n: int) -> list[bytes]:
    """Check the model's answer for ``n`` inputs and encode it; PredictionError if wrong."""
    if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__len__"):
        raise PredictionError(
            f"predict must return a list of {n} strings, got {type(outputs).__name__}"
        )
    if len(outputs) != n:
        raise PredictionError(f"predict returned {len(outputs)} outputs for {n} inputs")
    try:  # every output a str (or a subclass): one C-level call each
        return [str.encode(out, "utf-8", "surrogatepass") for out in outputs]
    except TypeError:
        pass  # something else among them: say which
    encoded = []
    for i, out in enumerate(outputs):
        if not isinstance(out, str):
            raise PredictionError(
                f"output {i} is {type(out).__name__}; every output must be a str "
                "(e.g. str(value) or json.dumps(value))"
            )
        encoded.append(out.encode("utf-8", "surrogatepass"))
    return encoded


def error_text(message: str, plain: bool) -> bytes:
    """An error output. Plain v3 peers get a JSON object (Clipper's frontend embeds it as
    JSON); a packed peer marks errors in the status frame and gets the message itself."""
    if plain:
        return json.dumps({"error": "prediction failed", "cause": message}).encode()
    return message.encode("utf-8", "replace")
