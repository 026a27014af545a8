"""One limit across a fleet: three real Envoys (two workers each) in global mode, the real
`portcullis-ratelimit` and a real `redis-server`, on loopback.

`cargo xtask test` starts the fleet (Envoys on 8443/8444/8445, the service on 8089, Redis on
56379) and runs this file; the origin is `FakeOrigin` from test_envoy.py. Then, with the service
over a three-node Redis Cluster, it runs this file again, the exactness tests only (`-k exact`); the fault-injection tests (frozen, killed Redis) are named
without "exact", so they run against the single Redis only.

Environment: PORTCULLIS_ROOT, PORTCULLIS_ENVOY, PORTCULLIS_REDIS_PID, PORTCULLIS_REDIS_ARGS (JSON
argv of redis-server, to start it again).
"""

import concurrent.futures
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from test_envoy import CERTS, CLIENT_TLS, ENVOY, ROOT, FakeOrigin, stats  # noqa: E402

HTTPS_PORTS = (8443, 8444, 8445)
ADMIN_PORTS = (9901, 9902, 9903)
METRICS_PORT = 9089


def post(port, path, timeout=15):
    """One POST on a fresh connection: (status, {name: [values]}, seconds it took)."""
    started = time.monotonic()
    conn = http.client.HTTPSConnection("localhost", port, context=CLIENT_TLS, timeout=timeout)
    try:
        conn.request("POST", path, body=b"{}", headers={"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        headers = {}
        for name, value in response.getheaders():
            headers.setdefault(name.lower(), []).append(value)
        return response.status, headers, time.monotonic() - started
    finally:
        conn.close()


def burst(path, count, ports=HTTPS_PORTS, workers=60):
    """`count` concurrent POSTs spread round-robin over `ports`."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(post, ports[i % len(ports)], path) for i in range(count)]
        return [f.result() for f in futures]


def statuses(results):
    counted = {}
    for status, _, _ in results:
        counted[status] = counted.get(status, 0) + 1
    return counted


def stat(admin_port, suffix):
    """A filter counter of one Envoy (0 before its first flush)."""
    for name, value in stats(admin_port).items():
        if name.endswith(suffix):
            return value
    return 0


def ratelimit_cluster_stats():
    """Envoy's view of the calls to the service, for failure messages."""
    lines = []
    for admin in ADMIN_PORTS:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        conn.request("GET", "/stats?filter=cluster.ratelimit.(upstream_rq|upstream_cx|internal)")
        text = conn.getresponse().read().decode()
        conn.close()
        lines += [f"{admin} {line}" for line in text.splitlines() if not line.endswith(": 0")]
    return "\n".join(lines)


def service_metric(name):
    conn = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def wait_for(check, seconds, what):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Fleet(unittest.TestCase):
    origin = None

    @classmethod
    def setUpClass(cls):
        cls.origin = FakeOrigin()

    @classmethod
    def tearDownClass(cls):
        if cls.origin:
            cls.origin.stop()

    def test_01_exact_300_concurrent_logins_over_three_envoys_pass_exactly_five(self):
        time.sleep(1.2)
        fallbacks = [stat(admin, "portcullis.global_fallbacks") for admin in ADMIN_PORTS]
        results = burst("/api/v1/auth/login", 300)
        self.assertEqual(statuses(results), {200: 5, 429: 295}, ratelimit_cluster_stats())
        refused = next(headers for status, headers, _ in results if status == 429)
        self.assertEqual(refused["ratelimit-policy"], ['"login";q=5;w=60'])
        # Every Envoy asked the service: the limit is the fleet's, not any one Envoy's.
        time.sleep(1.2)
        for admin, before in zip(ADMIN_PORTS, fallbacks):
            self.assertGreater(stat(admin, "portcullis.global_calls"), 0, f"Envoy admin {admin}")
            self.assertEqual(stat(admin, "portcullis.global_fallbacks"), before, f"Envoy admin {admin}")

    def test_02_exact_the_refill_is_shared_by_the_fleet(self):
        # Spend the refresh tier, then wait out its Retry-After: one request fits, anywhere.
        spent = burst("/api/v1/auth/refresh", 30)
        self.assertEqual(statuses(spent)[200], 5)
        wait = max(int(headers["retry-after"][0]) for status, headers, _ in spent if status == 429)
        time.sleep(wait + 0.5)
        again = burst("/api/v1/auth/refresh", 9, workers=9)
        self.assertEqual(statuses(again).get(200), 1, statuses(again))

    def test_04_a_frozen_redis_costs_each_request_the_timeout_and_limits_fall_back_per_envoy(self):
        pid = int(os.environ["PORTCULLIS_REDIS_PID"])
        os.kill(pid, signal.SIGSTOP)
        try:
            results = []
            for port in HTTPS_PORTS:
                results += [post(port, "/api/v1/transcribe") for _ in range(14)]
        finally:
            os.kill(pid, signal.SIGCONT)
        counted = statuses(results)
        self.assertFalse([s for s in counted if s >= 500], counted)
        # Each Envoy's own exact limiter decides: 10 per Envoy, never unlimited.
        self.assertEqual(counted, {200: 30, 429: 12})
        slowest = max(seconds for _, _, seconds in results)
        # The service gives up on Redis after 50 ms, before the filter's own timeout.
        self.assertLess(slowest, 0.5, "every answer within the timeout plus a little (TLS included)")
        time.sleep(1.2)
        self.assertGreaterEqual(sum(stat(a, "portcullis.global_fallbacks") for a in ADMIN_PORTS), 42)

    def test_05_a_killed_and_restarted_redis_counts_one_limit_again_with_nothing_else_restarted(self):
        pid = int(os.environ["PORTCULLIS_REDIS_PID"])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: service_metric("portcullis_ratelimit_redis_up") == 0, 10, "the service to see Redis down")
        args = json.loads(os.environ["PORTCULLIS_REDIS_ARGS"])
        redis = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: service_metric("portcullis_ratelimit_redis_up") == 1, 15, "the service to reconnect")
            results = burst("/api/v1/schedule", 300)
            self.assertEqual(statuses(results), {200: 10, 429: 290})
        finally:
            redis.terminate()
            redis.wait(10)

    def test_03_exact_envoys_own_ratelimit_filter_speaks_to_the_service(self):
        """Envoy's native envoy.filters.http.ratelimit (X-RateLimit headers on) against
        portcullis-ratelimit: descriptors from route actions, the service's headers passed on."""
        config = NATIVE_ENVOY.format(
            ca=os.path.join(CERTS, "ca.crt"),
            crt=os.path.join(CERTS, "envoy-client.crt"),
            key=os.path.join(CERTS, "envoy-client.key"),
        )
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "native.yaml")
            with open(path, "w") as f:
                f.write(config)
            log = open(os.path.join(scratch, "envoy.log"), "w")
            envoy = subprocess.Popen(
                [ENVOY, "--disable-hot-restart", "--base-id", "79", "--concurrency", "1", "-c", path, "-l", "warn"],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
            try:
                wait_for(lambda: admin_live(19904), 20, "the native-filter Envoy")
                seen = []
                for _ in range(7):
                    conn = http.client.HTTPConnection("127.0.0.1", 18446, timeout=10)
                    conn.request("GET", "/native")
                    response = conn.getresponse()
                    response.read()
                    seen.append((response.status, {k.lower(): v for k, v in response.getheaders()}))
                    conn.close()
                self.assertEqual([s for s, _ in seen], [200] * 5 + [429] * 2, seen[-1])
                ok, refused = seen[0][1], seen[5][1]
                self.assertEqual(ok.get("x-ratelimit-limit"), '5, 5;w=60;name="login"')
                self.assertEqual(ok.get("x-ratelimit-remaining"), "4")
                self.assertEqual(refused.get("ratelimit-policy"), '"login";q=5;w=60')
                self.assertEqual(refused.get("retry-after"), "12")
            finally:
                envoy.terminate()
                envoy.wait(10)
                log.close()


def admin_live(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/ready")
        ok = conn.getresponse().read().decode().strip() == "LIVE"
        conn.close()
        return ok
    except OSError:
        return False


# An Envoy with only its own ratelimit filter: plain HTTP on 18446, admin 19904, the service on
# 8089, the fake origin on 9443 (mTLS). Descriptors: the policy's login tier (5/minute) and the
# client's address, which the service keeps only as a keyed hash.
NATIVE_ENVOY = """
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 19904 }} }}
static_resources:
  listeners:
    - name: native
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 18446 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: native
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route:
                            cluster: origin
                            rate_limits:
                              - actions:
                                  - generic_key: {{ descriptor_key: tier, descriptor_value: login }}
                                  - remote_address: {{}}
                http_filters:
                  - name: envoy.filters.http.ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                      domain: portcullis
                      enable_x_ratelimit_headers: DRAFT_VERSION_03
                      failure_mode_deny: false
                      timeout: 0.5s
                      rate_limit_service:
                        transport_api_version: V3
                        grpc_service: {{ envoy_grpc: {{ cluster_name: ratelimit }} }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: ratelimit
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: ratelimit
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 8089 }} }} }} }}] }}]
    - name: origin
      type: STATIC
      connect_timeout: 2s
      load_assignment:
        cluster_name: origin
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9443 }} }} }} }}] }}]
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: localhost
          common_tls_context:
            validation_context: {{ trusted_ca: {{ filename: {ca} }} }}
            tls_certificates:
              - certificate_chain: {{ filename: {crt} }}
                private_key: {{ filename: {key} }}
"""

if __name__ == "__main__":
    unittest.main(verbosity=2)
