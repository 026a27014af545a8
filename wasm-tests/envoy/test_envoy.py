"""The Portcullis filter inside real Envoy, over real HTTP.

`cargo xtask test` starts Envoy with the project's envoy.yaml (ports 8080/8443/9901) and runs
this file. The origin on 127.0.0.1:9443 is played by `FakeOrigin` below: TLS, a client
certificate from the dev CA required (as the real origin requires of Envoy), and answers chosen
per request by the test (header `x-test-upstream`), so conformance vectors can say what the
upstream returns.

Environment: PORTCULLIS_ENVOY (binary), PORTCULLIS_ROOT (project root).
"""

import concurrent.futures
import http.client
import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ROOT = os.environ["PORTCULLIS_ROOT"]
ENVOY = os.environ["PORTCULLIS_ENVOY"]
CERTS = os.path.join(ROOT, ".portcullis", "certs")
VECTORS = os.path.join(ROOT, "shared", "conformance", "vectors.json")

SEED = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "x-xss-protection": "1; mode=block",
    "content-security-policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; form-action 'self'",
    "referrer-policy": "strict-origin-when-cross-origin",
    "permissions-policy": "geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=()",
    "server": "Unknown",
}
HSTS = "max-age=31536000; includeSubDomains; preload"


OPEN_CONNECTIONS = set()


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        OPEN_CONNECTIONS.add(self.connection)

    def finish(self):
        OPEN_CONNECTIONS.discard(self.connection)
        super().finish()

    def handle_one(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        spec = json.loads(self.headers.get("x-test-upstream") or "{}")
        status = spec.get("status", 200)
        headers = spec.get("headers", [["content-type", "application/json"], ["x-powered-by", "FastAPI"]])
        body = spec.get("body", '{"ok":true}').encode()
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("server", "uvicorn")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_one

    def log_message(self, *args):
        pass


class FakeOrigin:
    def __init__(self):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(os.path.join(CERTS, "origin.crt"), os.path.join(CERTS, "origin.key"))
        context.load_verify_locations(os.path.join(CERTS, "ca.crt"))
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 9443), Upstream)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Dies like a crashed origin: no listener, and Envoy's pooled connections cut."""
        self.server.shutdown()
        self.server.server_close()
        for connection in list(OPEN_CONNECTIONS):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


CLIENT_TLS = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.crt"))


def send(method, path, *, https=True, host=None, headers=(), body=None, upstream=None):
    """One request on a fresh connection; returns (status, {lowercase name: [values]}, body)."""
    if https:
        conn = http.client.HTTPSConnection("localhost", 8443, context=CLIENT_TLS, timeout=15)
    else:
        conn = http.client.HTTPConnection("localhost", 8080, timeout=15)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        if upstream is not None:
            conn.putheader("x-test-upstream", json.dumps(upstream))
        data = body.encode() if body else b""
        if data or method in ("POST", "PUT", "PATCH"):
            conn.putheader("content-length", str(len(data)))
        conn.endheaders(data or None)
        response = conn.getresponse()
        payload = response.read()
        collected = {}
        for name, value in response.getheaders():
            collected.setdefault(name.lower(), []).append(value)
        return response.status, collected, payload.decode("utf-8", "replace")
    finally:
        conn.close()


def stats(admin=9901):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    conn.request("GET", "/stats?filter=portcullis")
    text = conn.getresponse().read().decode()
    conn.close()
    return {name: int(value) for name, value in re.findall(r"^(\S+): (\d+)$", text, re.M)}


def counter(name):
    values = stats()
    for key, value in values.items():
        if key.endswith(name):
            return value
    raise AssertionError(f"no stat ending in {name}: {sorted(values)}")


def eventually(check, seconds=5.0):
    """The filter flushes its counters to Envoy once a second; wait for them."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class EnvoyFilter(unittest.TestCase):
    origin = None

    @classmethod
    def setUpClass(cls):
        cls.origin = FakeOrigin()

    @classmethod
    def tearDownClass(cls):
        if cls.origin:
            cls.origin.stop()

    def assert_seed(self, headers, https, what):
        for name, value in SEED.items():
            self.assertEqual(headers.get(name), [value], f"{name} on {what}")
        self.assertEqual(headers.get("strict-transport-security"), [HSTS] if https else None, f"HSTS on {what}")
        self.assertNotIn("x-powered-by", headers, what)
        self.assertEqual([n for n in headers if n.startswith("x-envoy-")], [], f"nothing reveals the proxy: {what}")

    def test_01_headers_on_forwarded_responses(self):
        for status in (200, 404, 500):
            code, headers, _ = send("GET", "/api/v1/health", upstream={"status": status})
            self.assertEqual(code, status)
            self.assert_seed(headers, True, f"upstream {status}")

    def test_02_redirects_to_https_8443(self):
        code, headers, _ = send("GET", "/api/v1/videos?page=2", https=False, host="localhost:8080")
        self.assertEqual(code, 301)
        self.assertEqual(headers["location"], ["https://localhost:8443/api/v1/videos?page=2"])
        self.assert_seed(headers, False, "301")
        code, headers, _ = send("POST", "/api/v1/auth/login", https=False, host="localhost:8080", body="{}")
        self.assertEqual(code, 308)
        self.assertEqual(headers["location"], ["https://localhost:8443/api/v1/auth/login"])

    def test_03_acme_challenge_passes_over_plain_http(self):
        code, headers, body = send("GET", "/.well-known/acme-challenge/abc", https=False, host="localhost:8080")
        self.assertEqual((code, body), (200, '{"ok":true}'))
        self.assert_seed(headers, False, "ACME")

    def test_04a_envoys_own_replies_carry_the_policys_headers(self):
        """Replies Envoy makes before the filter runs (a path it cannot normalise: 400; headers
        over its limit: 431) carry the policy's reply headers, HSTS only over TLS — the same as
        the filter's own replies (envoy.yaml's local_reply_config is generated from the policy)."""
        _, filter_reply, filter_body = send("GET", "/", host="evil.example")
        own_names = {"cache-control", *SEED, "strict-transport-security"}
        cases = [
            ("400", "GET", "/api/v1/jobs/%00", (), 400),
            ("431", "GET", "/api/v1/health", (("x-large", "a" * 100_000),), 431),
        ]
        for what, method, path, headers, status in cases:
            for https in (True, False):
                code, got, _ = send(method, path, https=https, headers=headers)
                label = f"Envoy's {what} over {'HTTPS' if https else 'HTTP'}"
                self.assertEqual(code, status, label)
                self.assert_seed(got, https, label)
                self.assertEqual(got.get("cache-control"), ["no-store"], label)
                for name in own_names - ({"strict-transport-security"} if not https else set()):
                    self.assertEqual(got.get(name), filter_reply.get(name), f"{name} on {label}, as on the filter's own")
                self.assertFalse([n for n in got if n.startswith("x-envoy")], label)
        self.assertIn("bad_host", filter_body)

    def test_04_host_off_the_allow_list_is_refused(self):
        for https in (True, False):
            code, headers, body = send("GET", "/", https=https, host="evil.example")
            self.assertEqual(code, 400)
            self.assertEqual(json.loads(body)["error"], "bad_host")
            self.assert_seed(headers, https, "400")

    def test_05_login_limit_is_exact_under_concurrency(self):
        def login(_):
            return send("POST", "/api/v1/auth/login", body='{"username":"a","password":"b"}')

        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(login, range(200)))
        passed = [r for r in results if r[0] != 429]
        limited = [r for r in results if r[0] == 429]
        self.assertEqual(len(passed), 5, "exactly the limit gets through two Envoy workers")
        self.assertEqual(len(limited), 195)
        _, headers, body = limited[0]
        self.assertEqual(json.loads(body)["error"], "rate_limited")
        self.assertEqual(headers["ratelimit-policy"], ['"login";q=5;w=60'])
        self.assertIn("retry-after", headers)
        self.assert_seed(headers, True, "429")
        eventually(lambda: self.assertGreaterEqual(counter("portcullis.rate_limited"), 195))

    def test_05a_spoofed_forwarded_for_buys_no_quota(self):
        """1,000 requests from one peer, each claiming another client in X-Forwarded-For: the
        peer is not a trusted proxy, so they all share its quota (transcribe: 10/minute)."""
        def transcribe(i):
            return send("POST", "/api/v1/transcribe", headers=[("x-forwarded-for", f"198.18.{i // 250}.{i % 250}")],
                        body='{"source_url":"https://media.example/a.mp4"}')[0]

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            codes = list(pool.map(transcribe, range(1000)))
        self.assertEqual(sum(1 for c in codes if c != 429), 10, "exactly the peer's own quota")

    def test_05b_local_replies_reach_http2_clients(self):
        """The filter's own replies over HTTP/2 (the tests above speak HTTP/1.1). Body-less: when a
        reply comes before the request body has arrived, Envoy ends the stream with RST_STREAM
        (NO_ERROR) — its behaviour for every early reply, its own 503s included — which older
        curl releases report as a failure."""
        codes = []
        for _ in range(3):
            result = subprocess.run(
                ["curl", "-s", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                 "--cacert", os.path.join(CERTS, "ca.crt"), "-X", "POST",
                 "https://localhost:8443/api/v1/auth/login"],
                capture_output=True, text=True, timeout=30,
            )
            codes.append(result.stdout)
        self.assertEqual(codes, ["2 429"] * 3, "HTTP/2 clients get the 429 (the login tier is spent)")

    def test_06_counters_move(self):
        time.sleep(1.2)  # let earlier tests' counts flush
        before = stats()
        send("GET", "/", https=False, host="localhost:8080")
        send("GET", "/", host="evil.example")

        def moved():
            after = stats()

            def delta(name):
                key = next(k for k in after if k.endswith(name))
                return after[key] - before.get(key, 0)

            self.assertEqual(delta("portcullis.requests"), 2)
            self.assertEqual(delta("portcullis.redirected"), 1)
            self.assertEqual(delta("portcullis.bad_host"), 1)

        eventually(moved)

    def test_07_conformance_vectors(self):
        """Cases that need no chosen peer, clock or Cloudflare, under the seed configuration
        envoy.yaml ships (its allow-list differs from the vectors' only in hosts the cases never use)."""
        with open(VECTORS) as f:
            vectors = json.load(f)
        replayed, skipped = 0, []
        for case in vectors["cases"]:
            if case["config"] != "seed" or case.get("requires"):
                skipped.append(case["name"])
                continue
            replayed += 1
            for step in case["steps"]:
                request = step["request"]
                scheme = request.get("scheme", "https")
                upstream = step.get("upstream")
                for _ in range(step.get("repeat", 1)):
                    code, headers, body = send(
                        request.get("method", "GET"),
                        request.get("path") or "/",
                        https=scheme == "https",
                        host=request.get("authority") or "",
                        headers=[tuple(h) for h in request.get("headers", [])],
                        upstream=upstream,
                    )
                    expect = step["expect"]
                    where = f"{case['name']}: {request.get('method')} {request.get('path')}"
                    self.assertEqual(code, expect["status"], where)
                    for name, value in expect.get("headers", {}).items():
                        self.assertEqual(headers.get(name.lower()), [value], f"{where}: {name}")
                    for name in expect.get("absent", []):
                        self.assertNotIn(name.lower(), headers, where)
                    for field, value in expect.get("body_json", {}).items():
                        self.assertEqual(json.loads(body).get(field), value, where)
        self.assertGreaterEqual(replayed, 13)
        print(f"\n    replayed {replayed} conformance cases in Envoy; {len(skipped)} need a chosen peer, "
              "a clock, Cloudflare or another configuration", file=sys.stderr)

    def test_08_bad_plugin_configuration_fails_validation(self):
        with open(os.path.join(ROOT, "envoy.yaml")) as f:
            config = f.read()
        broken = config.replace('"https_port": 8443', '"https_port": "8443"', 1)
        self.assertNotEqual(broken, config)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=os.path.join(ROOT, ".portcullis"), delete=False) as f:
            f.write(broken)
        try:
            result = subprocess.run(
                [ENVOY, "--mode", "validate", "-c", f.name, "--log-level", "warn"],
                cwd=ROOT, capture_output=True, text=True, timeout=60,
            )
        finally:
            os.unlink(f.name)
        self.assertNotEqual(result.returncode, 0, "a bad policy must fail validation")
        self.assertIn("portcullis: invalid configuration: https_redirect.https_port", result.stdout + result.stderr)

    def test_09_origin_down_is_503_with_headers(self):
        self.origin.stop()
        type(self).origin = None
        code, headers, _ = send("GET", "/api/v1/health")
        self.assertEqual(code, 503)
        self.assert_seed(headers, True, "Envoy's 503")


if __name__ == "__main__":
    unittest.main(verbosity=2)
