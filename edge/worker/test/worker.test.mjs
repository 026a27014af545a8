// The built Worker inside workerd: forwarding, headers on every reply, exact limits across
// isolates, the ratelimits mode, origin down, bad configuration.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { SEED_HEADERS, closedPort, eventually, startOrigin, startWorker } from "./harness.mjs";

const POLICY = { allowed_hosts: ["localhost", "api.example.com"], https_redirect: { https_port: 8443 } };
const HSTS = "max-age=31536000; includeSubDomains; preload";

let origin;
before(async () => {
  origin = await startOrigin();
});
after(async () => {
  await origin.close();
});

function assertSecurityHeaders(response, { https }) {
  for (const [name, value] of Object.entries(SEED_HEADERS)) {
    assert.equal(response.headers.get(name), value, name);
  }
  assert.ok(response.headers.get("content-security-policy")?.startsWith("default-src 'self'"));
  assert.equal(response.headers.get("strict-transport-security"), https ? HSTS : null);
  assert.equal(response.headers.get("x-powered-by"), null);
}

const upstream = (spec) => Buffer.from(JSON.stringify(spec)).toString("base64");

test("forwarding: method, streamed body, headers minus hop-by-hop; response edited", async () => {
  const worker = await startWorker({ policy: POLICY, origin: `${origin.url}/base` });
  try {
    const body = "x".repeat(200_000);
    const response = await worker.fetch("https://localhost/api/v1/things?q=1", {
      method: "PUT",
      body,
      headers: {
        "content-type": "text/plain",
        "x-custom": "kept",
        "proxy-authorization": "Basic c2VjcmV0",
        te: "trailers",
        "x-forwarded-for": "10.9.8.7",
        "x-forwarded-proto": "http",
        forwarded: "for=10.9.8.7",
        "cf-connecting-ip": "198.51.100.23",
        "cf-ray": "client-made",
        "x-test-id": "fwd-1",
        "x-test-upstream": upstream({
          status: 201,
          headers: [
            ["server", "nginx"],
            ["x-powered-by", "PHP"],
            ["set-cookie", "a=1; Secure"],
            ["set-cookie", "b=2; Secure"],
            ["x-origin", "yes"],
          ],
          body: "created",
        }),
      },
    });
    assert.equal(response.status, 201);
    assert.equal(await response.text(), "created");
    assertSecurityHeaders(response, { https: true });
    assert.equal(response.headers.get("x-origin"), "yes");
    assert.deepEqual(response.headers.getSetCookie(), ["a=1; Secure", "b=2; Secure"]);
    const seen = origin.seen.find((s) => s.headers["x-test-id"] === "fwd-1");
    assert.ok(seen, "the origin got the request");
    assert.equal(seen.method, "PUT");
    assert.equal(seen.url, "/base/api/v1/things?q=1");
    assert.equal(seen.body.length, body.length);
    assert.equal(seen.headers["x-custom"], "kept");
    assert.equal(seen.headers["proxy-authorization"], undefined);
    assert.equal(seen.headers.te, undefined);
    // Forwarding headers as the origin receives them: the Worker's, never the client's.
    assert.equal(seen.headers["x-forwarded-for"], "198.51.100.23");
    assert.equal(seen.headers["x-forwarded-proto"], "https");
    assert.equal(seen.headers.forwarded, undefined);
    assert.equal(seen.headers["cf-ray"], undefined);
    assert.equal(seen.headers["cf-connecting-ip"], undefined);
  } finally {
    await worker.dispose();
  }
});

test("an origin redirect is passed to the client, not followed", async () => {
  const worker = await startWorker({ policy: POLICY, origin: origin.url });
  try {
    const response = await worker.fetch("https://localhost/old", {
      headers: { "x-test-upstream": upstream({ status: 302, headers: [["location", "/new"]], body: "" }) },
    });
    assert.equal(response.status, 302);
    assert.equal(response.headers.get("location"), "/new");
    assertSecurityHeaders(response, { https: true });
  } finally {
    await worker.dispose();
  }
});

test("local replies: 301/308 redirects, 400 for a foreign Host, all with headers", async () => {
  const worker = await startWorker({ policy: POLICY, origin: origin.url });
  try {
    const get = await worker.fetch("http://localhost/api/v1/videos?page=2");
    assert.equal(get.status, 301);
    assert.equal(get.headers.get("location"), "https://localhost:8443/api/v1/videos?page=2");
    assertSecurityHeaders(get, { https: false });
    const post = await worker.fetch("http://localhost/api/v1/auth/login", { method: "POST", body: "{}" });
    assert.equal(post.status, 308);
    const evil = await worker.fetch("http://evil.example/x");
    assert.equal(evil.status, 400, "never a redirect to an attacker's host");
    assert.equal(evil.headers.get("location"), null);
    assertSecurityHeaders(evil, { https: false });
    const evilTls = await worker.fetch("https://evil.example/x");
    assert.equal(evilTls.status, 400);
    assertSecurityHeaders(evilTls, { https: true });
    assert.equal((await evilTls.json()).error, "bad_host");
  } finally {
    await worker.dispose();
  }
});

test("429 with every rate-limit header; RateLimit headers on allowed responses", async () => {
  const worker = await startWorker({ policy: POLICY, origin: origin.url });
  try {
    const login = () =>
      worker.fetch("https://localhost/api/v1/auth/login", {
        method: "POST",
        body: "{}",
        headers: { "cf-connecting-ip": "198.51.100.1" },
      });
    for (let i = 0; i < 5; i++) {
      const ok = await login();
      assert.equal(ok.status, 200);
      assert.equal(ok.headers.get("ratelimit-policy"), '"login";q=5;w=60');
      assert.equal(ok.headers.get("x-ratelimit-remaining"), String(4 - i));
      await ok.arrayBuffer();
    }
    const refused = await login();
    assert.equal(refused.status, 429);
    assert.equal(refused.headers.get("retry-after"), "12");
    assert.equal(refused.headers.get("ratelimit"), '"login";r=0;t=12');
    assert.equal(refused.headers.get("ratelimit-policy"), '"login";q=5;w=60');
    assert.equal(refused.headers.get("x-ratelimit-limit"), "5");
    assert.equal(refused.headers.get("x-ratelimit-remaining"), "0");
    assert.equal(refused.headers.get("x-ratelimit-reset"), "12");
    assertSecurityHeaders(refused, { https: true });
    assert.equal((await refused.json()).error, "rate_limited");
    // Another client, and another spelling of the same tier for this client.
    const other = await worker.fetch("https://localhost/api/v1/auth/login", {
      method: "POST",
      body: "{}",
      headers: { "cf-connecting-ip": "198.51.100.2" },
    });
    assert.equal(other.status, 200);
    const spelled = await worker.fetch("https://localhost/API/v1//auth/./Login/", {
      method: "POST",
      body: "{}",
      headers: { "cf-connecting-ip": "198.51.100.1" },
    });
    assert.equal(spelled.status, 429);
  } finally {
    await worker.dispose();
  }
});

test("exactness: 60 concurrent requests of one client through two isolates → exactly 10 allowed", async () => {
  const worker = await startWorker({ policy: POLICY, origin: origin.url, second: true });
  try {
    const before = origin.seen.length;
    const requests = Array.from({ length: 60 }, (_, i) =>
      worker
        .fetch("https://localhost/api/v1/transcribe", {
          method: "POST",
          body: "{}",
          headers: { "cf-connecting-ip": "2001:db8:42::" + (i + 1).toString(16) },
          via: i % 2 ? "b" : "a",
        })
        .then(async (r) => {
          await r.arrayBuffer();
          return r.status;
        }),
    );
    const statuses = await Promise.all(requests);
    const allowed = statuses.filter((s) => s === 200).length;
    const refused = statuses.filter((s) => s === 429).length;
    assert.equal(allowed, 10, `statuses: ${statuses.join(",")}`);
    assert.equal(refused, 50);
    assert.equal(origin.seen.length - before, 10, "the origin saw exactly the allowed ones");
  } finally {
    await worker.dispose();
  }
});

test("two isolates taking turns count one client's quota together", async () => {
  const worker = await startWorker({ policy: POLICY, origin: origin.url, second: true });
  try {
    const send = (via) =>
      worker
        .fetch("https://localhost/api/v1/auth/refresh", {
          method: "POST",
          body: "{}",
          headers: { "cf-connecting-ip": "203.0.113.200" },
          via,
        })
        .then(async (r) => (await r.arrayBuffer(), r.status));
    const statuses = [];
    for (let i = 0; i < 6; i++) statuses.push(await send(i % 2 ? "b" : "a"));
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429]);
  } finally {
    await worker.dispose();
  }
});

test("a failing Durable Object under a login flood: the login tier stays limited, every decision counted", async () => {
  const worker = await startWorker({ policy: POLICY, origin: origin.url, brokenObjects: true });
  try {
    const login = (ip) =>
      worker
        .fetch("https://localhost/api/v1/auth/login", {
          method: "POST",
          body: "{}",
          headers: { "cf-connecting-ip": ip },
        })
        .then(async (r) => (await r.arrayBuffer(), r.status));
    const flood = await Promise.all(Array.from({ length: 40 }, () => login("198.51.100.77")));
    assert.equal(flood.filter((s) => s === 200).length, 5, `the isolate's own limit: ${flood}`);
    assert.equal(flood.filter((s) => s === 429).length, 35, `${flood}`);
    assert.equal(await login("198.51.100.78"), 200, "another client keeps its own quota");
    assert.ok(
      await eventually(() =>
        worker.logs.some((l) => /degraded decision \(\d+ in this isolate\).*overloaded.*"login"/.test(l)),
      ),
      worker.logs.join("\n"),
    );
  } finally {
    await worker.dispose();
  }
  // `deny` per tier: the login tier refuses while the store fails, another tier allows.
  const strict = {
    ...POLICY,
    limiter: { on_store_error: "allow" },
    rate_limits: [
      { name: "login", method: "POST", path: "/api/v1/auth/login", limit: "5/minute", on_store_error: "deny" },
      { name: "videos", method: "GET", path: "/api/v1/videos", limit: "60/minute" },
    ],
  };
  const denying = await startWorker({ policy: strict, origin: origin.url, brokenObjects: true });
  try {
    const login = await denying.fetch("https://localhost/api/v1/auth/login", { method: "POST", body: "{}" });
    assert.equal(login.status, 503);
    assert.equal(login.headers.get("retry-after"), "1");
    assert.equal((await login.json()).error, "limiter_unavailable");
    const videos = await denying.fetch("https://localhost/api/v1/videos");
    assert.equal(videos.status, 200, "on_store_error allow for the other tier");
    await videos.arrayBuffer();
  } finally {
    await denying.dispose();
  }
});

test("origin down: 502 JSON with security and rate-limit headers", async () => {
  const port = await closedPort();
  const worker = await startWorker({ policy: POLICY, origin: `http://127.0.0.1:${port}` });
  try {
    const response = await worker.fetch("https://localhost/api/v1/videos", {
      headers: { "cf-connecting-ip": "192.0.2.50" },
    });
    assert.equal(response.status, 502);
    assertSecurityHeaders(response, { https: true });
    assert.equal(response.headers.get("ratelimit-policy"), '"videos";q=60;w=60');
    assert.equal(response.headers.get("content-type"), "application/json");
    assert.equal((await response.json()).error, "bad_gateway");
    assert.ok(await eventually(() => worker.logs.some((l) => l.includes("unreachable"))), worker.logs.join("\n"));
  } finally {
    await worker.dispose();
  }
});

test("bad configuration: every request is a 500 and the log names the field", async () => {
  const cases = [
    {
      policy: { rate_limits: [{ name: "x", method: "GET", path: "/a", limit: "5/minit" }] },
      vars: {},
      logged: "PORTCULLIS_POLICY: rate_limits[0].limit",
    },
    { policy: '{"allowed_hosts": [', vars: {}, logged: "PORTCULLIS_POLICY:" },
    { policy: POLICY, vars: { ORIGIN_URL: "not a url" }, logged: "ORIGIN_URL:" },
    { policy: POLICY, vars: { PORTCULLIS_LIMITER: "kv" }, logged: "PORTCULLIS_LIMITER:" },
    // No secret hash key: the Worker refuses to serve rather than hash with a public one.
    {
      policy: POLICY,
      vars: { PORTCULLIS_HASH_KEY: undefined },
      logged: "PORTCULLIS_HASH_KEY: is not set: the Worker hashes clients with a secret key",
    },
    { policy: POLICY, vars: { PORTCULLIS_HASH_KEY: "abc" }, logged: "PORTCULLIS_HASH_KEY: is not 32 hexadecimal digits" },
  ];
  for (const c of cases) {
    const worker = await startWorker({ policy: c.policy, origin: origin.url, vars: c.vars });
    try {
      const before = origin.seen.length;
      for (const [url, init] of [
        ["https://localhost/api/v1/health", {}],
        ["http://localhost/", {}],
        ["https://localhost/api/v1/auth/login", { method: "POST", body: "{}" }],
      ]) {
        const response = await worker.fetch(url, init);
        assert.equal(response.status, 500, `${url} with ${JSON.stringify(c)}`);
        assertSecurityHeaders(response, { https: url.startsWith("https") });
        assert.equal((await response.json()).error, "misconfigured");
      }
      assert.equal(origin.seen.length, before, "nothing passed through");
      assert.ok(
        await eventually(() => worker.logs.some((l) => l.includes(c.logged))),
        `log names ${c.logged}:\n${worker.logs.join("\n")}`,
      );
    } finally {
      await worker.dispose();
    }
  }
});

test("ratelimits mode: the binding limits, 429 from the core, no RateLimit headers on success", async () => {
  const worker = await startWorker({ policy: POLICY, origin: origin.url, vars: { PORTCULLIS_LIMITER: "ratelimits" } });
  try {
    const statuses = [];
    for (let i = 0; i < 6; i++) {
      const response = await worker.fetch("https://localhost/api/v1/auth/login", {
        method: "POST",
        body: "{}",
        headers: { "cf-connecting-ip": "192.0.2.77" },
      });
      statuses.push(response.status);
      if (response.status === 200) {
        assert.equal(response.headers.get("ratelimit"), null);
        assert.equal(response.headers.get("x-ratelimit-remaining"), null);
      } else {
        assert.equal(response.headers.get("retry-after"), "12");
        assert.equal((await response.clone().json()).error, "rate_limited");
      }
      assertSecurityHeaders(response, { https: true });
      await response.arrayBuffer();
    }
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429]);
    const other = await worker.fetch("https://localhost/api/v1/auth/login", {
      method: "POST",
      body: "{}",
      headers: { "cf-connecting-ip": "192.0.2.78" },
    });
    assert.equal(other.status, 200, "another client has its own quota");
  } finally {
    await worker.dispose();
  }
});
