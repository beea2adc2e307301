"""An HTTP-level fake of the few Kubernetes API endpoints `bcoder submit` calls.

No API server can run on the CI machine, so the submission path is tested against this: a real
HTTP server on 127.0.0.1 that the real ``kubernetes`` client talks to through a real kubeconfig.
It implements, for any namespace:

- ``GET  /api/v1/namespaces/{ns}/configmaps/{name}``          (configmaps preloaded by the test)
- ``POST /apis/batch/v1/namespaces/{ns}/jobs``                 (create; 409 on a name clash)
- ``GET  /apis/batch/v1/namespaces/{ns}/jobs/{name}[/status]``
- ``GET  /api/v1/namespaces/{ns}/pods?labelSelector=k=v``
- ``GET  /api/v1/namespaces/{ns}/pods/{name}/log``
- ``POST /apis/{group}/{version}/namespaces/{ns}/{plural}``   (custom objects, e.g. Argo Workflows:
  stored in ``custom``; ``metadata.generateName`` gets a random suffix as the server gives it;
  409 on a name clash; a group in ``missing_groups`` answers 404, as a cluster without the CRD)

A created Job gets one pod per completion (named ``<job>-<index>-<random>``, labelled like the Job
controller does). The pods "run" for ``polls_to_finish`` status reads, then end with the exit
code ``exit_code(job, index)`` gives; the Job's conditions follow the Job controller's rules for
the manifests' podFailurePolicy (exit code matching a FailJob rule -> Failed/PodFailurePolicy,
otherwise Failed/BackoffLimitExceeded after backoffLimit+1 failures — retried pods are created).
A pod's log is the command line the kubelet would run, with ``$(VAR)`` references expanded from
the container's env (literal values and configMapKeyRef) and ``JOB_COMPLETION_INDEX``, followed by
``log_lines``. Every request is recorded in ``requests``, every created object in ``received``.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeCluster:
    """State and behaviour of the fake API server."""

    polls_to_finish: int = 2
    exit_code: Callable[[dict, int], int] = lambda job, index: 0
    log_lines: list[str] = field(default_factory=lambda: ["step 1 loss 0.5", "done"])
    configmaps: dict[tuple[str, str], dict] = field(default_factory=dict)
    jobs: dict[tuple[str, str], dict] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    received: list[dict] = field(default_factory=list)  # created objects exactly as sent
    custom: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # (plural, ns, name) -> object
    missing_groups: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- behaviour -------------------------------------------------------------------------

    def _new_pod(self, ns: str, job: dict, index: int) -> None:
        name = f"{job['metadata']['name']}-{index}-{secrets.token_hex(3)[:5]}"
        template = copy.deepcopy(job["spec"]["template"])
        labels = {
            **template.get("metadata", {}).get("labels", {}),
            "batch.kubernetes.io/job-name": job["metadata"]["name"],
            "job-name": job["metadata"]["name"],
            "batch.kubernetes.io/job-completion-index": str(index),
        }
        self.pods[(ns, name)] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "creationTimestamp": _now()},
            "spec": template["spec"],
            "status": {"phase": "Running"},
            "_index": index,
            "_log": self._log_for(ns, template["spec"]["containers"][0], index),
        }

    def _log_for(self, ns: str, container: dict, index: int) -> str:
        env = {"JOB_COMPLETION_INDEX": str(index)}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    env[item["name"]] = self.configmaps[(ns, ref["name"])]["data"][ref["key"]]
        words = [*container.get("command", ["bcoder"]), *container.get("args", [])]
        line = " ".join(_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), w) for w in words)
        return "\n".join([f"$ {line}", *self.log_lines]) + "\n"

    def _pods_of(self, ns: str, job_name: str) -> list[dict]:
        return [
            p
            for (pns, _), p in self.pods.items()
            if pns == ns and p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == job_name
        ]

    def _advance(self, ns: str, job: dict) -> None:
        """One status read: pods progress; the Job's conditions follow its pods."""
        status = job["status"]
        if any(c["type"] in ("Complete", "Failed") for c in status.get("conditions", [])):
            return
        job["_polls"] += 1
        if job["_polls"] < self.polls_to_finish:
            return
        spec = job["spec"]
        for pod in self._pods_of(ns, job["metadata"]["name"]):
            if pod["status"]["phase"] != "Running":
                continue
            code = self.exit_code(job, pod["_index"])
            pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            pod["status"]["containerStatuses"] = [
                {
                    "name": "bcoder",
                    "image": pod["spec"]["containers"][0]["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
                    },
                }
            ]
            if code == 0:
                status["succeeded"] = status.get("succeeded", 0) + 1
                continue
            status["failed"] = status.get("failed", 0) + 1
            fail_job = any(
                code in rule.get("onExitCodes", {}).get("values", [])
                for rule in spec.get("podFailurePolicy", {}).get("rules", [])
                if rule["action"] == "FailJob"
            )
            if fail_job:
                self._condition(
                    status,
                    "Failed",
                    "PodFailurePolicy",
                    f"Container bcoder for pod {ns}/{pod['metadata']['name']} failed with exit code "
                    f"{code} matching FailJob rule at index 0",
                )
                break
            if status["failed"] > spec.get("backoffLimit", 6):
                self._condition(
                    status, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                )
                break
            self._new_pod(ns, job, pod["_index"])  # the controller retries the pod
        job["_polls"] = 0
        done = not any(c["type"] == "Failed" for c in status.get("conditions", []))
        if done and status.get("succeeded", 0) >= spec.get("completions", 1):
            self._condition(status, "Complete", None, None)
        status["active"] = sum(
            1 for p in self._pods_of(ns, job["metadata"]["name"]) if p["status"]["phase"] == "Running"
        )

    @staticmethod
    def _condition(status: dict, kind: str, reason: str | None, message: str | None) -> None:
        cond = {"type": kind, "status": "True", "lastProbeTime": _now(), "lastTransitionTime": _now()}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        status.setdefault("conditions", []).append(cond)

    # --- HTTP ------------------------------------------------------------------------------

    def handle(self, method: str, url: str, body: bytes) -> tuple[int, dict | str]:
        """Answer one request: (status code, JSON object or log text)."""
        parsed = urlparse(url)
        path, query = parsed.path, parse_qs(parsed.query)
        self.requests.append((method, path))
        parts = path.strip("/").split("/")
        with self.lock:
            if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "configmaps":
                cm = self.configmaps.get((parts[3], parts[5]))
                return (200, cm) if cm else _not_found("configmaps", parts[5])
            if parts[:4] == ["apis", "batch", "v1", "namespaces"] and len(parts) >= 6 and parts[5] == "jobs":
                ns = parts[4]
                if method == "POST" and len(parts) == 6:
                    job = json.loads(body)
                    self.received.append(copy.deepcopy(job))
                    name = job["metadata"]["name"]
                    if (ns, name) in self.jobs:
                        return 409, _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
                    job["metadata"].update(
                        namespace=ns, uid=secrets.token_hex(8), creationTimestamp=_now(), resourceVersion="1"
                    )
                    job["status"] = {"active": job["spec"].get("completions", 1)}
                    job["_polls"] = 0
                    self.jobs[(ns, name)] = job
                    for index in range(job["spec"].get("completions", 1)):
                        self._new_pod(ns, job, index)
                    return 201, _public(job)
                if method == "GET" and len(parts) in (7, 8):
                    job = self.jobs.get((ns, parts[6]))
                    if job is None:
                        return _not_found("jobs.batch", parts[6])
                    self._advance(ns, job)
                    return 200, _public(job)
            if parts[0] == "apis" and len(parts) == 6 and parts[3] == "namespaces" and parts[1] != "batch":
                group, ns, plural = parts[1], parts[4], parts[5]
                if group in self.missing_groups:
                    return 404, _status(404, "NotFound", "the server could not find the requested resource")
                if method == "POST":
                    obj = json.loads(body)
                    self.received.append(copy.deepcopy(obj))
                    meta = obj.setdefault("metadata", {})
                    if not meta.get("name"):
                        meta["name"] = meta.get("generateName", "obj-") + secrets.token_hex(3)[:5]
                    if (plural, ns, meta["name"]) in self.custom:
                        return 409, _status(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
                    meta.update(namespace=ns, uid=secrets.token_hex(8), creationTimestamp=_now())
                    self.custom[(plural, ns, meta["name"])] = obj
                    return 201, obj
            if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5 and parts[4] == "pods":
                ns = parts[3]
                if len(parts) == 5:
                    selector = query.get("labelSelector", [""])[0]
                    wanted = dict(s.split("=", 1) for s in selector.split(",") if s)
                    items = [
                        _public(p)
                        for (pns, _), p in self.pods.items()
                        if pns == ns and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
                    ]
                    return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
                if len(parts) == 7 and parts[6] == "log":
                    pod = self.pods.get((ns, parts[5]))
                    return (200, pod["_log"]) if pod else _not_found("pods", parts[5])
        return 404, _status(404, "NotFound", f"the fake has no {method} {path}")


def _public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


def _not_found(kind: str, name: str) -> tuple[int, dict]:
    return 404, _status(404, "NotFound", f'{kind} "{name}" not found')


class FakeApiServer:
    """``FakeCluster`` served on 127.0.0.1 (a free port) in a background thread; a context manager."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        fake = cluster

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                code, payload = fake.handle(method, self.path, self.rfile.read(length) if length else b"")
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header(
                    "Content-Type", "text/plain" if isinstance(payload, str) else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context points at this server."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path
