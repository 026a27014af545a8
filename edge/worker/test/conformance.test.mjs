// Replays shared/conformance/vectors.json through the built Worker inside workerd.
//
// On Cloudflare the peer IS the client Cloudflare saw: the Worker hands the core
// `Peer::Cloudflare`, and the core reads `CF-Connecting-IP`. So a case's chosen `peer` address is
// sent as `CF-Connecting-IP` (IPv6 without brackets and port). Cases are skipped, with the reason
// printed, when the Worker cannot present them faithfully.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { ROOT, startOrigin, startWorker } from "./harness.mjs";

const vectors = JSON.parse(readFileSync(path.join(ROOT, "shared/conformance/vectors.json"), "utf8"));

/** Why the Worker cannot replay `c`, or null. */
function cannotReplay(c) {
  const requires = c.requires ?? [];
  if (requires.includes("clock")) {
    return "needs a movable clock: workerd's Date.now() is the real time (the adapter's native replay, src/conformance.rs, covers it on a fixed clock)";
  }
  if (requires.includes("raw_request")) {
    return "needs a request without Host: fetch into workerd always carries the URL's host";
  }
  const config = vectors.configs[c.config] ?? {};
  if (requires.includes("peer") && (config.client_ip?.trusted_proxies?.length || config.client_ip?.trusted_hops)) {
    return "trusts a proxy's X-Forwarded-For/-Proto: on Cloudflare the peer is Cloudflare's edge, CF-Connecting-IP is authoritative and the core never reads forwarding headers for it";
  }
  return null;
}

/** A vector `peer` as CF-Connecting-IP: `ip`, `ip:port`, `[v6]:port` → the bare address. */
function connectingIp(peer) {
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(peer);
  if (v6) return v6[1];
  const v4port = /^(\d+\.\d+\.\d+\.\d+):\d+$/.exec(peer);
  if (v4port) return v4port[1];
  return peer;
}

/**
 * Whether `got` is `expected` once the real time a case takes here is allowed for: workerd's
 * clock is the wall clock, so a reset the vectors state at one instant ("t=60") reads a second
 * lower when the case's requests span more than a second. Only the seconds until a full reset
 * may drift, and only down, by at most 2.
 */
function sameUpToElapsed(name, expected, got) {
  if (got === null) return false;
  const seconds = (text, pattern) => text.match(pattern)?.[1];
  const pattern = name === "ratelimit" ? /;t=(\d+)$/ : name === "x-ratelimit-reset" ? /^(\d+)$/ : null;
  if (!pattern) return false;
  const [want, have] = [seconds(expected, pattern), seconds(got, pattern)];
  if (want === undefined || have === undefined) return false;
  const drift = Number(want) - Number(have);
  return drift >= 0 && drift <= 2 && expected.replace(pattern, "") === got.replace(pattern, "");
}

/** A tier's refill interval (ms) from its `RateLimit-Policy` (`"name";q=N;w=W`), or null. */
function refillIntervalMs(policy) {
  const m = policy && /q=(\d+);w=(\d+)/.exec(policy);
  return m ? (Number(m[2]) * 1000) / Number(m[1]) : null;
}

function check(expect, observed) {
  const problems = [];
  if (observed.action !== expect.action) problems.push(`action: expected ${expect.action}, got ${observed.action}`);
  if (observed.status !== expect.status) problems.push(`status: expected ${expect.status}, got ${observed.status}`);
  for (const [name, value] of Object.entries(expect.headers ?? {})) {
    const got = observed.headers.get(name);
    if (got !== value && !sameUpToElapsed(name, value, got)) {
      problems.push(`${name}: expected ${JSON.stringify(value)}, got ${JSON.stringify(got)}`);
    }
  }
  for (const name of expect.absent ?? []) {
    const got = observed.headers.get(name);
    if (got !== null) problems.push(`${name}: expected absent, got ${JSON.stringify(got)}`);
  }
  if (expect.body_json && Object.keys(expect.body_json).length) {
    let body;
    try {
      body = JSON.parse(observed.body);
    } catch (err) {
      problems.push(`body is not JSON (${err.message}): ${JSON.stringify(observed.body)}`);
    }
    if (body) {
      for (const [field, value] of Object.entries(expect.body_json)) {
        try {
          assert.deepStrictEqual(body[field], value);
        } catch {
          problems.push(`body.${field}: expected ${JSON.stringify(value)}, got ${JSON.stringify(body[field])}`);
        }
      }
    }
  }
  return problems;
}

const replayable = vectors.cases.filter((c) => !cannotReplay(c));
const skipped = vectors.cases.filter((c) => cannotReplay(c));

test("conformance vectors inside workerd", async (t) => {
  const origin = await startOrigin();
  let counter = 0;
  const outran = [];
  // One workerd per config; cases get fresh rate state through the clients the vectors give
  // them (checked below), so no case inherits another's quota.
  const byConfig = new Map();
  for (const c of replayable) {
    if (!byConfig.has(c.config)) byConfig.set(c.config, []);
    byConfig.get(c.config).push(c);
  }
  try {
    for (const [config, cases] of byConfig) {
      const clients = new Map();
      for (const c of cases) {
        for (const step of c.steps) {
          const ip = step.request.peer && step.request.peer !== "cloudflare" ? connectingIp(step.request.peer) : null;
          if (ip && clients.has(ip) && clients.get(ip) !== c.name) {
            assert.fail(`cases "${clients.get(ip)}" and "${c.name}" share client ${ip}: give them separate workerd instances`);
          }
          if (ip) clients.set(ip, c.name);
        }
      }
      const worker = await startWorker({ policy: vectors.configs[config], origin: origin.url });
      try {
        for (const c of cases) {
          await t.test(`${c.name} [${config}]`, async () => {
            const started = Date.now();
            for (const [i, step] of c.steps.entries()) {
              const r = step.request;
              const headers = new Headers();
              for (const [name, value] of r.headers ?? []) headers.append(name, value);
              if (r.peer && r.peer !== "cloudflare") headers.set("cf-connecting-ip", connectingIp(r.peer));
              if (step.upstream) {
                headers.set("x-test-upstream", Buffer.from(JSON.stringify(step.upstream)).toString("base64"));
              }
              const scheme = r.scheme ?? "https";
              const authority = r.authority === undefined ? "localhost" : r.authority;
              const url = `${scheme}://${authority}${r.path ?? "/"}`;
              for (let n = 0; n < (step.repeat ?? 1); n++) {
                const id = `case-${++counter}`;
                headers.set("x-test-id", id);
                const response = await worker.fetch(url, { method: r.method ?? "GET", headers });
                const body = await response.text();
                const forwarded = origin.seen.some((s) => s.headers["x-test-id"] === id);
                const problems = check(step.expect, {
                  action: forwarded ? "forward" : "respond",
                  status: response.status,
                  headers: response.headers,
                  body,
                });
                const interval = refillIntervalMs(response.headers.get("ratelimit-policy"));
                if (problems.length && interval !== null && Date.now() - started >= interval) {
                  // workerd's clock is the real one: the tier refilled while the case ran.
                  outran.push(
                    `"${c.name}": its requests took ${Date.now() - started} ms, past the tier's refill interval ` +
                      `(${interval} ms); the adapter's native replay (src/conformance.rs) covers it on a fixed clock`,
                  );
                  return;
                }
                assert.deepEqual(problems, [], `step ${i} request ${n + 1} (${r.method ?? "GET"} ${url})`);
              }
            }
          });
        }
      } finally {
        await worker.dispose();
      }
    }
  } finally {
    await origin.close();
  }
  console.log(`\n    replayed ${replayable.length} of ${vectors.cases.length} conformance cases inside workerd`);
  for (const c of skipped) console.log(`    not replayed: "${c.name}": ${cannotReplay(c)}`);
  for (const line of outran) console.log(`    outran by the real clock: ${line}`);
  // A slow machine may outrun a few fast tiers; most cases must still be replayed in full.
  assert.ok(outran.length <= 3, `${outran.length} cases outran the real clock: ${outran.join("; ")}`);
});
