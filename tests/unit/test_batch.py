import json

import numpy as np
import pytest

from schooner.runtime import batch
from schooner.runtime.errors import PredictionError
from schooner.runtime.wire import InputType, PredictRequest


def plain(items, input_type=InputType.DOUBLES):
    return PredictRequest(b"\1\0\0\0", input_type, tuple(map(len, items)), inputs=list(items))


def packed(items, input_type=InputType.DOUBLES):
    return PredictRequest(b"\1\0\0\0", input_type, tuple(map(len, items)),
                          payload=b"".join(items))  # fmt: skip


def test_packed_equal_sizes_is_a_zero_copy_2d_view():
    x = np.arange(12.0).reshape(3, 4)
    payload = bytearray(x.tobytes())
    req = PredictRequest(b"\0\0\0\0", InputType.DOUBLES, (32, 32, 32), payload=payload)
    out = batch.assemble([req], InputType.DOUBLES)
    assert out.shape == (3, 4) and np.array_equal(out, x)
    payload[0:8] = np.float64(99).tobytes()  # a view: the payload shows through
    assert out[0, 0] == 99


def test_plain_single_input_is_a_view_and_equal_sizes_join_once():
    x = np.arange(4.0)
    one = batch.assemble([plain([x.tobytes()])], InputType.DOUBLES)
    assert one.shape == (1, 4)
    two = batch.assemble([plain([x.tobytes(), (x + 1).tobytes()])], InputType.DOUBLES)
    assert two.shape == (2, 4) and two[1, 0] == 1


def test_unequal_sizes_give_a_list_and_requests_coalesce_in_order():
    a, b = np.arange(2, dtype="<i4"), np.arange(5, dtype="<i4")
    out = batch.assemble([plain([a.tobytes()], InputType.INTS), packed([b.tobytes()], InputType.INTS)],
                         InputType.INTS)  # fmt: skip
    assert isinstance(out, list) and [len(x) for x in out] == [2, 5] and out[1].dtype == np.int32


@pytest.mark.parametrize("input_type,dtype", [(InputType.FLOATS, "<f4"), (InputType.BYTES, "i1")])
def test_element_types(input_type, dtype):
    x = np.arange(6, dtype=dtype)
    out = batch.assemble([packed([x.tobytes(), x.tobytes()], input_type)], input_type)
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 6)


def test_strings_decode_utf8():
    items = ["héllo".encode(), b"", "日本".encode()]
    assert batch.assemble([packed(items, InputType.STRINGS)], InputType.STRINGS) == ["héllo", "", "日本"]


def test_validate_rejects_partial_elements_bad_utf8_and_wrong_type():
    with pytest.raises(PredictionError, match="not a whole number of doubles"):
        batch.validate(plain([b"1234567"]), InputType.DOUBLES)
    with pytest.raises(PredictionError, match="UTF-8"):
        batch.validate(plain([b"\xff\xfe"], InputType.STRINGS), InputType.STRINGS)
    with pytest.raises(PredictionError, match="carries strings"):
        batch.validate(plain([b"x"], InputType.STRINGS), InputType.DOUBLES)


def test_encode_outputs_checks_count_and_type():
    assert batch.encode_outputs(["a", "é"], 2) == [b"a", "é".encode()]
    assert batch.encode_outputs(np.array(["x", "y"]), 2) == [b"x", b"y"]
    with pytest.raises(PredictionError, match="returned 1 outputs for 2 inputs"):
        batch.encode_outputs(["a"], 2)
    with pytest.raises(PredictionError, match="output 1 is int"):
        batch.encode_outputs(["a", 3], 2)
    with pytest.raises(PredictionError, match="list of 2 strings, got str"):
        batch.encode_outputs("ab", 2)
    with pytest.raises(PredictionError, match="got NoneType"):
        batch.encode_outputs(None, 1)


def test_error_text_is_json_for_plain_peers():
    assert json.loads(batch.error_text("boom", plain=True)) == {"error": "prediction failed", "cause": "boom"}
    assert batch.error_text("boom", plain=False) == b"boom"
