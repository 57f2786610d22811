"""An HTTP stand-in for the Kubernetes API server: the one fake these tests allow.

No API server or kubelet can be installed here, so the manager's calls go through the
official ``kubernetes`` client to this server, which records each request and answers as
the API does for what the manager uses: create (201, or 409 AlreadyExists), read and
delete (404 NotFound for a missing object, a Status on success), replace (PUT), list with
an equality ``labelSelector`` (and ``fieldSelector=involvedObject.name=`` for events), a
Deployment's ``/status`` and ``/scale`` (PATCH sets ``spec.replicas``). It plays the
controllers too, simply: a Deployment's pods exist as soon as it does (``<name>-<i>``) and
are all available (each with a one-line log), unless the test marks the Deployment ``stuck`` (its pods then wait in
``ImagePullBackOff`` with the events the test gives). A Service of type NodePort gets the
node port the test maps its port to, else one from 30000 up.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# path segment -> kind, for the collections the manager uses
_CORE = {"secrets": "Secret", "services": "Service", "persistentvolumeclaims":
         "PersistentVolumeClaim", "pods": "Pod", "events": "Event"}  # fmt: skip
_APPS = {"deployments": "Deployment"}


@dataclass
class StandIn:
    nodes: list[dict[str, Any]] = field(default_factory=lambda: [node("node-1", "127.0.0.1")])
    node_ports: dict[int, int] = field(default_factory=dict)
    stuck: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_port: int = 30000
    _uid: int = 0

    def calls(self, *, reads: bool = True) -> list[str]:
        """The recorded requests as ``"METHOD path?query"`` (a POST's object name after it);
        without the GETs if asked."""
        return [f"{m} {p} {n}".rstrip() for m, p, n in self.requests if reads or m != "GET"]

    def clear(self) -> None:
        self.requests.clear()

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, _ns, n) in self.objects if k == kind)

    # ------------------------------------------------------------------ answers

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, Any]:
        with self._lock:
            name = body.get("metadata", {}).get("name", "") if method == "POST" else ""
            self.requests.append((method, urllib.parse.unquote(raw_path), name))
            parsed = urllib.parse.urlsplit(raw_path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            parts = parsed.path.strip("/").split("/")
            return self._route(method, parts, query, body)

    def _route(self, method: str, parts: list[str], query: dict[str, str],
               body: Any) -> tuple[int, Any]:  # fmt: skip
        if parts[:2] == ["api", "v1"]:
            rest = parts[2:]
            if rest == ["nodes"]:
                return 200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {},
                             "items": self.nodes}  # fmt: skip
            if rest == ["namespaces"] and method == "POST":
                return self._create("Namespace", "", body)
            if len(rest) == 2 and rest[0] == "namespaces":
                return self._one("Namespace", "", rest[1], method, body)
            if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in _CORE:
                return self._collection(_CORE[rest[2]], rest[1], rest[3:], method, query, body)
        if parts[:3] == ["apis", "apps", "v1"] and len(parts) >= 6 and parts[5] in _APPS:
            return self._collection(_APPS[parts[5]], parts[4], parts[6:], method, query, body)
        if parts[:3] == ["apis", "networking.k8s.io", "v1"] and len(parts) >= 6 \
                and parts[5] == "networkpolicies":
            return self._collection("NetworkPolicy", parts[4], parts[6:], method, query, body)
        return 404, _status(404, "NotFound", f"no route {'/'.join(parts)}")

    def _collection(self, kind: str, ns: str, rest: list[str], method: str,
                    query: dict[str, str], body: Any) -> tuple[int, Any]:  # fmt: skip
        if not rest:
            if method == "POST":
                return self._create(kind, ns, body)
            return 200, self._list(kind, ns, query)
        name, sub = rest[0], rest[1:]
        if kind == "Pod" and sub == ["log"]:
            if not any(p["metadata"]["name"] == name for p in self._pods(ns)):
                return 404, _status(404, "NotFound", f'pods "{name}" not found')
            return 200, f"the log of {name}\n"
        if kind == "Deployment" and sub == ["status"]:
            return self._one(kind, ns, name, "GET", None)
        if kind == "Deployment" and sub == ["scale"]:
            found = self.objects.get((kind, ns, name))
            if found is None:
                return 404, _status(404, "NotFound", f'deployments.apps "{name}" not found')
            if method == "PATCH":
                found["spec"]["replicas"] = int(body["spec"]["replicas"])
                self._settle(found)
            n = found["spec"]["replicas"]
            return 200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                         "metadata": {"name": name, "namespace": ns},
                         "spec": {"replicas": n}, "status": {"replicas": n}}  # fmt: skip
        return self._one(kind, ns, name, method, body)

    def _create(self, kind: str, ns: str, body: dict[str, Any]) -> tuple[int, Any]:
        name = body["metadata"]["name"]
        if (kind, ns, name) in self.objects:
            return 409, _status(409, "AlreadyExists", f'{kind} "{name}" already exists')
        obj = json.loads(json.dumps(body))
        self._uid += 1
        obj["metadata"].update(uid=f"uid-{self._uid}", resourceVersion=str(self._uid))
        if ns:
            obj["metadata"]["namespace"] = ns
        if kind == "Service":
            self._assign_ports(obj)
        if kind == "Secret":  # the API stores stringData as data, base64
            obj.setdefault("data", {}).update({
                k: base64.b64encode(v.encode()).decode()
                for k, v in obj.pop("stringData", {}).items()
            })  # fmt: skip
        self.objects[(kind, ns, name)] = obj
        if kind == "Deployment":
            self._settle(obj)
        return 201, obj

    def _one(self, kind: str, ns: str, name: str, method: str, body: Any) -> tuple[int, Any]:
        key = (kind, ns, name)
        if key not in self.objects:
            plural = {"Deployment": "deployments.apps"}.get(kind, kind.lower() + "s")
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        if method == "DELETE":
            gone = self.objects.pop(key)
            if kind == "Namespace":
                for other in [k for k in self.objects if k[1] == name]:
                    del self.objects[other]
            if kind in ("Service", "PersistentVolumeClaim"):  # the API answers these with the object
                return 200, gone
            return 200, {**_status(200, "", "deleted", "Success"), "details": {"name": name}}
        if method == "PUT":
            body["metadata"].setdefault("uid", self.objects[key]["metadata"].get("uid"))
            self.objects[key] = json.loads(json.dumps(body))
            self._settle(self.objects[key])
        return 200, self.objects[key]

    def _list(self, kind: str, ns: str, query: dict[str, str]) -> dict[str, Any]:
        wanted = dict(p.split("=", 1) for p in query.get("labelSelector", "").split(",") if p)
        field_sel = query.get("fieldSelector", "")
        items = []
        for (k, n, _name), obj in sorted(self.objects.items()):
            labels = obj["metadata"].get("labels") or {}
            if k == kind and n == ns and all(labels.get(a) == b for a, b in wanted.items()):
                items.append(obj)
        if kind == "Pod":
            items = [p for p in self._pods(ns)
                     if all((p["metadata"]["labels"]).get(a) == b for a, b in wanted.items())]
        if kind == "Event":
            involved = field_sel.partition("involvedObject.name=")[2]
            items = [e for e in self._events(ns) if e["involvedObject"]["name"] == involved]
        return {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {}, "items": items}

    # ------------------------------------------------------------------ controllers

    def _settle(self, deployment: dict[str, Any]) -> None:
        n = deployment["spec"].get("replicas", 1)
        stuck = deployment["metadata"]["name"] in self.stuck
        deployment["status"] = {"replicas": n, "availableReplicas": 0 if stuck else n,
                                "readyReplicas": 0 if stuck else n}  # fmt: skip

    def _pods(self, ns: str) -> list[dict[str, Any]]:
        pods = []
        for (k, n, name), d in sorted(self.objects.items()):
            if k != "Deployment" or n != ns:
                continue
            stuck = name in self.stuck
            for i in range(d["spec"].get("replicas", 1)):
                state = ({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}}
                         if stuck else {"running": {}})  # fmt: skip
                pods.append({
                    "metadata": {"name": f"{name}-{i}", "namespace": ns,
                                 "labels": d["spec"]["template"]["metadata"]["labels"]},
                    "status": {"phase": "Pending" if stuck else "Running",
                               "containerStatuses": [{"name": "c", "ready": not stuck,
                                                      "restartCount": 0, "image": "x",
                                                      "imageID": "", "state": state}]},
                })  # fmt: skip
        return pods

    def _events(self, ns: str) -> list[dict[str, Any]]:
        events = []
        for pod in self._pods(ns):
            deployment = pod["metadata"]["name"].rsplit("-", 1)[0]
            for kind, reason, message in self.stuck.get(deployment, []):
                events.append({"metadata": {"name": f"{pod['metadata']['name']}.{reason}"},
                               "involvedObject": {"name": pod["metadata"]["name"]},
                               "type": kind, "reason": reason, "message": message})  # fmt: skip
        return events

    def _assign_ports(self, service: dict[str, Any]) -> None:
        spec = service["spec"]
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            for port in spec["ports"]:
                if port["port"] in self.node_ports:
                    port["nodePort"] = self.node_ports[port["port"]]
                else:
                    port["nodePort"] = self._next_port
                    self._next_port += 1


def node(name: str, internal_ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip},
                                     {"type": "Hostname", "address": name}]}}  # fmt: skip


def _status(code: int, reason: str, message: str, status: str = "Failure") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status,
            "message": message, "reason": reason, "code": code}  # fmt: skip


@contextmanager
def standin_server(standin: StandIn) -> Iterator[StandIn]:
    """Serve ``standin`` on 127.0.0.1 (a free port) for the ``with`` block."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            code, answer = standin.handle(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    standin.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def api_client(standin: StandIn) -> Any:
    """The official client, configured for the stand-in."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = standin.url
    return kubernetes.client.ApiClient(configuration)
