"""The etcd v2 store as an administrator sees it, for the v2 tests: a real etcd 3.4 with
`--enable-v2=true` (the lab's launcher), `ETCDCTL_API=2 etcdctl`, and the v2 keys API read and
written directly over HTTP (fast enough for the thousand writes the index-cleared tests need)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from fastflannel.lab.etcd import EtcdMember, EtcdServer, etcdctl

PREFIX = "/coreos.com/network"
ENABLE_V2 = ("--enable-v2=true",)
HTTP_TIMEOUT_S = 10.0


class V2Etcd(EtcdServer):
    """A member of our own with the v2 API on (optionally TLS with client certificates):
    restartable on the same port and data dir."""

    def __init__(self, pki: dict[str, str] | None = None, extra: tuple[str, ...] = ()):
        self.dir = tempfile.mkdtemp(prefix="ff-etcd-v2-")
        args, ctl, self.ctl2_flags = [*ENABLE_V2, *extra], [], []
        if pki is not None:
            args += ["--cert-file", pki["server.crt"], "--key-file", pki["server.key"],
                     "--trusted-ca-file", pki["ca.crt"], "--client-cert-auth"]
            ctl = ["--cacert", pki["ca.crt"], "--cert", pki["client.crt"], "--key", pki["client.key"]]
            self.ctl2_flags = ["--ca-file", pki["ca.crt"], "--cert-file", pki["client.crt"],
                               "--key-file", pki["client.key"]]
        self.pki = pki
        super().__init__(EtcdMember.local(self.dir, scheme="https" if pki else "http", extra_args=args,
                                          ctl_flags=ctl))

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def ctl2(self, *args: str) -> str:
        """`ETCDCTL_API=2 etcdctl ...` as the seed's walk-through runs it; its stdout."""
        p = etcdctl(self.url, *args, flags=self.ctl2_flags, api="2")
        assert p.returncode == 0, f"etcdctl {args}: {p.stderr}"
        return p.stdout


def v2_request(url: str, method: str, key: str, auth: tuple[str, str] | None = None,
               form: dict[str, str] | None = None, **params: str) -> tuple[int, Any, dict[str, str]]:
    """One v2 keys API request: (HTTP status, decoded JSON, headers)."""
    target = f"{url}/v2/keys{urllib.parse.quote(key)}"
    if params:
        target += "?" + urllib.parse.urlencode(params)
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(target, data=data, method=method)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = body.decode(errors="replace")
        return e.code, decoded, dict(e.headers)


def v2_set(url: str, key: str, value: str, **params: str) -> dict:
    status, body, _ = v2_request(url, "PUT", key, form={"value": value}, **params)
    assert status in (200, 201), (status, body)
    return body


def v2_node(url: str, key: str) -> dict | None:
    status, body, _ = v2_request(url, "GET", key)
    if status == 404:
        return None
    assert status == 200, (status, body)
    return body["node"]


def v2_leases(url: str, prefix: str = PREFIX) -> dict[str, dict]:
    """`<ip>-<len>` -> the v2 node (value, ttl, expiration, modifiedIndex) of every lease."""
    status, body, _ = v2_request(url, "GET", f"{prefix}/subnets", recursive="true")
    if status == 404:
        return {}
    assert status == 200, (status, body)
    return {n["key"].rsplit("/", 1)[1]: n for n in body["node"].get("nodes", [])}


def make_pki(d: str) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    os.makedirs(d)
    f = {n: os.path.join(d, n) for n in ("ca.crt", "ca.key", "server.crt", "server.key",
                                         "client.crt", "client.key", "san.cnf")}

    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ff-v2-test-ca",
        "-keyout", f["ca.key"], "-out", f["ca.crt"])
    with open(f["san.cnf"], "w") as fh:
        fh.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for who in ("server", "client"):
        csr = os.path.join(d, who + ".csr")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f[who + ".key"],
            "-out", csr)
        run("x509", "-req", "-in", csr, "-CA", f["ca.crt"], "-CAkey", f["ca.key"], "-CAcreateserial",
            "-days", "1", "-extfile", f["san.cnf"], "-out", f[who + ".crt"])
    return f
