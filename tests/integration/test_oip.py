"""The Open Inference Protocol v2 on the real frontend, with real containers behind it: raw
HTTP for exact JSON conformance, and the clients people use (tritonclient, kserve)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow


def rows_sum(xs):
    return [str(float(sum(x))) for x in xs]


def rows_pair(xs):
    return [json.dumps([float(x[0]), float(x[0]) * 2]) for x in xs]


def rows_upper(xs):
    return [x.upper() for x in xs]


def fragile(xs):
    if any(float(x[0]) < 0 for x in xs):
        raise RuntimeError("cannot take negatives")
    return [str(float(x[0])) for x in xs]


def rows_len(xs):
    return [str(len(x)) for x in xs]


APPS = {  # app -> (input type, model function, default output)
    "sum": ("doubles", rows_sum, "-1"),
    "pair": ("floats", rows_pair, "[0, 0]"),
    "upper": ("strings", rows_upper, '"none"'),
    "fragile": ("doubles", fragile, "-1"),
    "count": ("ints", rows_len, "0"),
}


@pytest.fixture
def frontend(start_frontend, start_container, closure_artifact):
    from conftest import free_port

    grpc_port = free_port()
    fe = start_frontend(extra_args=["--grpc-port", str(grpc_port)])
    fe.grpc_port = grpc_port
    for app, (input_type, func, default) in APPS.items():
        fe.admin("add_app", {"name": app, "input_type": input_type, "default_output": default,
                             "latency_slo_micros": 5_000_000})  # fmt: skip
        for version in ("1", "2"):
            fe.admin("add_model", {"model_name": app, "model_version": version, "labels": [],
                                   "input_type": input_type, "container_name": "local",
                                   "model_data_path": "", "batch_size": -1})  # fmt: skip
        fe.admin("add_model_links", {"app_name": app, "model_names": [app]})
        fe.admin("set_model_version", {"model_name": app, "model_version": "1"})
        start_container(closure_artifact(func, name=app), rpc_port=fe.rpc_port, model_name=app,
                        model_version="1", input_type=input_type, name=f"{app}-1")  # fmt: skip
        fe.wait_for_replica(app, "1", timeout=60)
    return fe


def infer(fe, model, body, *, path=None, headers=None, raw=None):
    url = f"{fe.query_url}/v2/models/{model}/{path or 'infer'}"
    data = raw if raw is not None else json.dumps(body).encode()
    r = requests.post(url, data=data, headers=headers or {"Content-Type": "application/json"},
                      timeout=30)  # fmt: skip
    return r


def test_health_metadata_and_readiness(frontend):
    base = frontend.query_url
    assert requests.get(f"{base}/v2/health/live").json() == {"live": True}
    assert requests.get(f"{base}/v2/health/ready").json() == {"ready": True}
    server = requests.get(f"{base}/v2").json()
    assert server["name"] == "schooner" and "binary_tensor_data" in server["extensions"]
    meta = requests.get(f"{base}/v2/models/sum").json()
    assert meta["name"] == "sum" and meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, -1]}]
    assert [o["name"] for o in meta["outputs"]] == ["output", "default", "default_explanation"]
    assert requests.get(f"{base}/v2/models/upper").json()["inputs"][0]["datatype"] == "BYTES"
    # ready: a replica of the current (or pinned) version is connected; version 2 has none
    assert requests.get(f"{base}/v2/models/sum/ready").status_code == 200
    assert requests.get(f"{base}/v2/models/sum/versions/1/ready").status_code == 200
    assert requests.get(f"{base}/v2/models/sum/versions/2/ready").status_code == 400
    r = requests.get(f"{base}/v2/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = requests.get(f"{base}/v2/models/sum/versions/9")
    assert r.status_code == 404 and "no version '9'" in r.json()["error"]
    assert requests.post(f"{base}/v2/health/live").status_code == 405


def test_json_inference_conformance(frontend):
    r = infer(frontend, "sum", {"id": "req-7", "inputs": [
        {"name": "input", "shape": [3, 2], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6.5]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-7" and body["model_name"] == "sum"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["output"] == {"name": "output", "datatype": "FP64", "shape": [3],
                             "data": [3.0, 7.0, 11.5]}  # fmt: skip
    assert out["default"]["data"] == [False, False, False]
    assert out["default_explanation"]["data"] == ["", "", ""]
    assert body["parameters"] == {"defaults": 0}
    # nested data, row-major, and the outputs selection
    r = infer(frontend, "sum", {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                            "data": [[1, 2], [3, 4]]}],
                                "outputs": [{"name": "output"}]})  # fmt: skip
    assert [o["name"] for o in r.json()["outputs"]] == ["output"]
    assert r.json()["outputs"][0]["data"] == [3.0, 7.0]
    # equal-length number lists are a 2-D tensor
    r = infer(frontend, "pair", {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32",
                                             "data": [1.5, 2]}]})  # fmt: skip
    assert r.json()["outputs"][0] == {"name": "output", "datatype": "FP64", "shape": [2, 2],
                                      "data": [1.5, 3.0, 2.0, 4.0]}  # fmt: skip
    # strings in, text out
    r = infer(frontend, "upper", {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES",
                                              "data": ["cat", "dog"]}]})  # fmt: skip
    assert r.json()["outputs"][0] == {"name": "output", "datatype": "BYTES", "shape": [2],
                                      "data": ["CAT", "DOG"]}  # fmt: skip
    # integers: INT64 within int32 is taken, INT32 answers are an INT64 tensor
    r = infer(frontend, "count", {"inputs": [{"name": "i", "shape": [1, 3], "datatype": "INT64",
                                              "data": [1, 2, 3]}]})  # fmt: skip
    assert r.json()["outputs"][0]["data"] == [3] and r.json()["outputs"][0]["datatype"] == "INT64"
    # a pinned version without replicas gets the default after the SLO: not here; version 1
    r = infer(frontend, "sum", {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64",
                                            "data": [2]}]}, path="versions/1/infer")  # fmt: skip
    assert r.json()["model_version"] == "1" and r.json()["outputs"][0]["data"] == [2.0]


def test_default_outputs_say_which_rows_and_why(frontend):
    r = infer(frontend, "fragile", {"inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP64",
                                                "data": [1, -1, 2]}]})  # fmt: skip
    body = r.json()
    out = {o["name"]: o for o in body["outputs"]}
    assert out["default"]["data"] == [False, True, False]  # the container isolates the bad row
    assert "cannot take negatives" in out["default_explanation"]["data"][1]
    # the same counts under Triton's metric names
    text = requests.get(f"{frontend.query_url}/metrics", timeout=10).text
    assert 'nv_inference_request_failure{model="fragile",version=""} 1.0' in text
    assert 'nv_inference_request_success{model="fragile",version=""} 2.0' in text
    assert 'nv_inference_count{model="fragile",version=""} 3.0' in text
    assert 'nv_inference_exec_count{model="fragile",version="1"}' in text
    assert out["output"]["data"][1] == -1
    assert body["parameters"]["defaults"] == sum(out["default"]["data"]) >= 1
    for i, value in ((0, 1.0), (2, 2.0)):  # good rows: served, or defaulted with the reason
        if not out["default"]["data"][i]:
            assert out["output"]["data"][i] == value
        else:
            assert "cannot take negatives" in out["default_explanation"]["data"][i]


BAD_REQUESTS = [
    ({"inputs": []}, 400, "non-empty array"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1]}]}, 400,
     "needs 2 values"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}, 400,
     "takes doubles: send FP64"),
    ({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}, 400,
     "not INT64"),
    ({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP99", "data": [1]}]}, 400,
     "unknown datatype"),
    ({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": ["1"]}]}, 400,
     "must be JSON numbers"),
    ({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [True]}]}, 400,
     "must be JSON numbers"),
    ({"inputs": [{"name": "x", "shape": [0, 1], "datatype": "FP64", "data": []}]}, 400,
     "at least 1"),
    ({"inputs": [{"name": "a", "shape": [1, 1], "datatype": "FP64", "data": [1]},
                 {"name": "b", "shape": [1, 1], "datatype": "FP64", "data": [1]}]}, 400,
     "one input tensor"),
    ({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1]}],
      "outputs": [{"name": "probabilities"}]}, 400, "unknown output"),
    ([1, 2], 400, "JSON object"),
]  # fmt: skip


def test_bad_requests_get_the_protocol_error_and_the_frontend_keeps_serving(frontend):
    for body, status, needle in BAD_REQUESTS:
        r = infer(frontend, "sum", body)
        assert r.status_code == status and needle in r.json()["error"], (body, r.text)
        assert set(r.json()) == {"error"}
    r = infer(frontend, "sum", None, raw=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    ok = infer(frontend, "sum", {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64",
                                             "data": [4]}]})  # fmt: skip
    assert ok.json()["outputs"][0]["data"] == [4.0]


def test_int64_outside_int32_is_refused(frontend):
    r = infer(frontend, "count", {"inputs": [{"name": "i", "shape": [1, 1], "datatype": "INT64",
                                              "data": [2**40]}]})  # fmt: skip
    assert r.status_code == 400 and "int32" in r.json()["error"]


def test_binary_tensor_extension_in_and_out(frontend):
    x = np.arange(6, dtype="<f8").reshape(3, 2)
    header = json.dumps({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP64",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "output", "parameters": {"binary_data": True}},
                                     {"name": "default"}]}).encode()  # fmt: skip
    r = infer(frontend, "sum", None, raw=header + x.tobytes(),
              headers={"Inference-Header-Content-Length": str(len(header)),
                       "Content-Type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 200, r.text
    length = int(r.headers["Inference-Header-Content-Length"])
    meta = json.loads(r.content[:length])
    out = meta["outputs"][0]
    assert out["datatype"] == "FP64" and out["parameters"]["binary_data_size"] == 24
    assert np.frombuffer(r.content[length:], "<f8").tolist() == [1.0, 5.0, 9.0]
    assert meta["outputs"][1]["data"] == [False] * 3
    # BYTES in binary form: u32 length + bytes per element
    words = [b"ab", "\u00e9t\u00e9".encode()]
    raw = b"".join(struct.pack("<I", len(w)) + w for w in words)
    header = json.dumps({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()  # fmt: skip
    r = infer(frontend, "upper", None, raw=header + raw,
              headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert r.json()["outputs"][0]["data"] == ["AB", "\u00c9T\u00c9"]
    # a declared header longer than the body
    r = infer(frontend, "sum", None, raw=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_tritonclient_http(frontend):
    httpclient = pytest.importorskip("tritonclient.http")
    c = httpclient.InferenceServerClient(f"127.0.0.1:{frontend.query_port}")
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("sum")
    assert c.get_model_metadata("sum")["name"] == "sum"
    x = httpclient.InferInput("input", [3, 2], "FP64")
    x.set_data_from_numpy(np.ones((3, 2)))  # binary by default
    result = c.infer("sum", [x])
    assert result.as_numpy("output").tolist() == [2.0, 2.0, 2.0]
    assert result.as_numpy("default").tolist() == [False] * 3
    # JSON input, JSON and binary outputs, a pinned version
    x = httpclient.InferInput("input", [2, 1], "FP64")
    x.set_data_from_numpy(np.array([[1.5], [2.5]]), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("output", binary_data=False)]
    result = c.infer("sum", [x], model_version="1", outputs=outputs, request_id="r1")
    assert result.as_numpy("output").tolist() == [1.5, 2.5]
    assert result.get_response()["id"] == "r1"
    s = httpclient.InferInput("s", [2], "BYTES")
    s.set_data_from_numpy(np.array([b"hi", b"yo"], dtype=object))
    assert c.infer("upper", [s]).as_numpy("output").tolist() == [b"HI", b"YO"]


KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, InferResponse, RESTConfig

async def run(base):
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    try:
        live = await client.is_server_live(base)
        ready = await client.is_model_ready(base, "sum")
        x = InferInput("input", [2, 2], "FP64")
        x.set_data_from_numpy(np.array([[1.0, 2.0], [3.0, 4.0]]), binary_data=False)
        response = await client.infer(base, InferRequest("sum", [x]), model_name="sum")
    finally:
        await client.close()
    assert isinstance(response, InferResponse)
    outputs = {o.name: o.as_numpy().tolist() for o in response.outputs}
    print(json.dumps({"live": live, "ready": ready, "outputs": outputs}))

asyncio.run(run(sys.argv[1]))
"""


def test_kserve_rest_client_v2(frontend):
    """kserve's own v2 REST client (in a process of its own: kserve and tritonclient each
    register the protocol's protobuf package ``inference``, so one process holds one)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("kserve") is None:
        pytest.skip("kserve is part of the test extra")

    done = subprocess.run([sys.executable, "-c", KSERVE_CLIENT, frontend.query_url],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["live"] is True and result["ready"] is True
    assert result["outputs"]["output"] == [3.0, 7.0]
    assert result["outputs"]["default"] == [False, False]


def test_tritonclient_grpc(frontend):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{frontend.grpc_port}")
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("sum")
    assert not c.is_model_ready("sum", model_version="2")  # no replica of version 2
    meta = c.get_model_metadata("sum")
    assert meta.name == "sum" and list(meta.versions) == ["1", "2"]
    assert meta.inputs[0].datatype == "FP64"
    assert c.get_server_metadata().name == "schooner"
    x = grpcclient.InferInput("input", [3, 2], "FP64")
    x.set_data_from_numpy(np.arange(6.0).reshape(3, 2))  # raw_input_contents
    result = c.infer("sum", [x], request_id="g1")
    assert result.as_numpy("output").tolist() == [1.0, 5.0, 9.0]
    assert result.as_numpy("default").tolist() == [False] * 3
    assert result.get_response().id == "g1"
    # strings, an output selection, a pinned version
    s = grpcclient.InferInput("s", [2], "BYTES")
    s.set_data_from_numpy(np.array([b"hi", b"yo"], dtype=object))
    result = c.infer("upper", [s], outputs=[grpcclient.InferRequestedOutput("output")],
                     model_version="1")  # fmt: skip
    assert result.as_numpy("output").tolist() == [b"HI", b"YO"]
    assert result.as_numpy("default") is None
    # the protocol's errors as gRPC status codes
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="no application"):
        c.infer("nope", [x])
    bad = grpcclient.InferInput("input", [1, 1], "INT64")
    bad.set_data_from_numpy(np.array([[1]], dtype=np.int64))
    with pytest.raises(InferenceServerException, match="takes doubles"):
        c.infer("sum", [bad])
    assert c.infer("sum", [x]).as_numpy("output").tolist() == [1.0, 5.0, 9.0]


def test_typed_contents_over_grpc(frontend):
    """A client that sends InferTensorContents instead of raw bytes (KServe's does), built
    from tritonclient's copy of the protocol (not ours: the test must not trust our .proto;
    and both define the package ``inference``, so one process holds only one of them)."""
    grpc = pytest.importorskip("grpc")
    pb = pytest.importorskip("tritonclient.grpc.service_pb2")

    channel = grpc.insecure_channel(f"127.0.0.1:{frontend.grpc_port}")
    infer_rpc = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)  # fmt: skip
    request = pb.ModelInferRequest(model_name="count")
    request.inputs.add(name="i", datatype="INT32", shape=[2, 2],
                       contents=pb.InferTensorContents(int_contents=[1, 2, 3, 4]))  # fmt: skip
    response = infer_rpc(request, timeout=30)
    out = response.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("output", "INT64", [2])
    assert np.frombuffer(response.raw_output_contents[0], "<i8").tolist() == [2, 2]
    assert response.parameters["defaults"].int64_param == 0
    channel.close()


def test_our_proto_matches_the_protocols_field_for_field():
    """frontend/oip_grpc.proto against tritonclient's compiled copy of the protocol (each in
    its own process: both define the package ``inference``)."""
    pytest.importorskip("tritonclient.grpc")
    import subprocess
    import sys

    describe = """
import json, sys
module = __import__(sys.argv[1], fromlist=["x"])
names = ["ServerLiveResponse", "ServerReadyResponse", "ModelReadyRequest", "ModelReadyResponse",
         "ServerMetadataResponse", "ModelMetadataRequest", "ModelMetadataResponse",
         "InferParameter", "InferTensorContents", "ModelInferRequest", "ModelInferResponse"]
def fields(d):
    out = {f.name: [f.number, f.type, f.label, f.message_type.full_name if f.message_type else ""]
           for f in d.fields}
    for nested in d.nested_types:
        if not nested.GetOptions().map_entry:
            out[nested.name] = fields(nested)
    return out
service = module.DESCRIPTOR.services_by_name["GRPCInferenceService"]
ours = {m.name for m in sys.modules["schooner.frontend.oip_grpc_pb2"].DESCRIPTOR
        .services_by_name["GRPCInferenceService"].methods} if sys.argv[1].startswith("schooner") else None
methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods
           if ours is None or m.name in ours}
print(json.dumps({"messages": {n: fields(getattr(module, n).DESCRIPTOR) for n in names},
                  "methods": methods}))
"""

    def run(module):
        done = subprocess.run([sys.executable, "-c", describe, module], capture_output=True,
                              text=True, check=True)  # fmt: skip
        return json.loads(done.stdout)

    ours, theirs = run("schooner.frontend.oip_grpc_pb2"), run("tritonclient.grpc.service_pb2")
    assert ours["messages"] == theirs["messages"]
    assert set(ours["methods"]) == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                    "ModelMetadata", "ModelInfer"}  # fmt: skip
    for name, signature in ours["methods"].items():
        assert theirs["methods"][name] == signature
