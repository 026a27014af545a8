// Shared pieces of the workerd tests: the built Worker in Miniflare, a local origin that answers
// as each request tells it to, and the Worker's log lines.
import http from "node:http";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const SHIM = path.join(ROOT, "edge/worker/build/worker/shim.mjs");
export const COMPATIBILITY_DATE = "2026-04-26";

if (!existsSync(SHIM)) {
  throw new Error(`${SHIM} is missing: build the Worker first (cargo xtask test does)`);
}

/** The seed's limited tiers as ratelimits bindings (mirrors wrangler.toml). */
export const RATELIMITS = {
  RATELIMIT_LOGIN: { simple: { limit: 5, period: 60 } },
  RATELIMIT_REFRESH: { simple: { limit: 5, period: 60 } },
  RATELIMIT_TRANSCRIBE: { simple: { limit: 10, period: 60 } },
  RATELIMIT_VIDEOS: { simple: { limit: 60, period: 60 } },
  RATELIMIT_ANALYZE: { simple: { limit: 60, period: 60 } },
  RATELIMIT_JOB_STATUS: { simple: { limit: 30, period: 60 } },
  RATELIMIT_JOB_DELETE: { simple: { limit: 30, period: 60 } },
  RATELIMIT_SCHEDULE: { simple: { limit: 10, period: 60 } },
};

/**
 * A local origin. A request may carry `x-test-upstream: base64(JSON {status, headers, body})`
 * to choose the answer; every request is recorded (method, url, headers, body).
 */
export async function startOrigin() {
  const seen = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      let answer = {
        status: 200,
        headers: [
          ["content-type", "application/json"],
          ["server", "uvicorn"],
          ["x-powered-by", "FastAPI"],
        ],
        body: '{"ok":true}',
      };
      const spec = req.headers["x-test-upstream"];
      if (spec) answer = JSON.parse(Buffer.from(spec, "base64").toString("utf8"));
      const flat = [];
      for (const [name, value] of answer.headers) flat.push(name, value);
      res.writeHead(answer.status, flat);
      res.end(req.method === "HEAD" ? undefined : answer.body);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** A port nothing listens on: bind one, then close it. */
export async function closedPort() {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * The built Worker in workerd. `policy` is the policy document (object or raw string);
 * `vars` overrides/adds Worker variables; `second: true` adds a second Worker (its own isolate)
 * bound to the first one's Durable Object namespace.
 */
/** The tests' `PORTCULLIS_HASH_KEY` (deployments set theirs with `wrangler secret put`). */
export const TEST_HASH_KEY = "0123456789abcdef0123456789abcdef";

/**
 * A Durable Object class that fails every call, as an overloaded or broken object does (the
 * stub's fetch rejects): what the Worker makes of a state store that cannot answer.
 */
const BROKEN_OBJECTS = `
export class RateLimiter {
  async fetch() { throw new Error("Durable Object is overloaded (test: every call fails)"); }
}
export default { fetch() { return new Response("not routed", { status: 404 }); } };
`;

export async function startWorker({ policy, origin, vars = {}, second = false, brokenObjects = false, extraBindings = {} }) {
  const logs = [];
  const bindings = {
    ORIGIN_URL: origin,
    PORTCULLIS_POLICY: typeof policy === "string" ? policy : JSON.stringify(policy),
    PORTCULLIS_HASH_KEY: TEST_HASH_KEY,
    ...vars,
  };
  for (const [k, v] of Object.entries(bindings)) if (v === undefined) delete bindings[k];
  const worker = (name, durableObjects) => ({
    name,
    modules: true,
    scriptPath: SHIM,
    modulesRules: [
      { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
      { type: "CompiledWasm", include: ["**/*.wasm"] },
    ],
    compatibilityDate: COMPATIBILITY_DATE,
    bindings,
    durableObjects,
    ratelimits: RATELIMITS,
  });
  const objects = brokenObjects
    ? { RATE_LIMITER: { className: "RateLimiter", scriptName: "broken-objects" } }
    : { RATE_LIMITER: "RateLimiter" };
  const workers = [{ ...worker("portcullis", objects), ...extraBindings }];
  if (brokenObjects) {
    workers.push({
      name: "broken-objects",
      modules: true,
      script: BROKEN_OBJECTS,
      compatibilityDate: COMPATIBILITY_DATE,
      durableObjects: { BROKEN: "RateLimiter" },
    });
  }
  if (second) {
    workers.push(
      worker("portcullis-b", { RATE_LIMITER: { className: "RateLimiter", scriptName: "portcullis" } }),
    );
  }
  const mf = new Miniflare({
    workers,
    // A fixed request.cf: never fetch Cloudflare's sample from the network.
    cf: { country: "XX", colo: "LOCAL" },
    handleRuntimeStdio(stdout, stderr) {
      for (const stream of [stdout, stderr]) {
        stream.setEncoding("utf8");
        stream.on("data", (text) => logs.push(...text.split("\n").filter(Boolean)));
      }
    },
  });
  await mf.ready;
  return {
    mf,
    logs,
    /** fetch through the first Worker, or through `portcullis-b` with `{ via: "b" }`. */
    async fetch(url, init = {}) {
      const { via, ...rest } = init;
      const options = { redirect: "manual", ...rest };
      if (via === "b") {
        const b = await mf.getWorker("portcullis-b");
        return b.fetch(url, options);
      }
      return mf.dispatchFetch(url, options);
    },
    dispose: () => mf.dispose(),
  };
}

/** Waits until `predicate()` holds (log lines arrive asynchronously), or gives up. */
export async function eventually(predicate, ms = 2000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (predicate()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return predicate();
}

export const SEED_HEADERS = {
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "x-xss-protection": "1; mode=block",
  "referrer-policy": "strict-origin-when-cross-origin",
  server: "Unknown",
};
