// workerd's CPU time per request through the built Worker, for `cargo xtask bench worker`:
// a redirect (the Worker answers itself) and a forward to a local origin, each timed from
// workerd's /proc CPU counters (user + system) over a batch of sequential requests, in rounds
// that alternate the two. Prints one JSON object: µs per request, one number per round.
import { readFileSync, readdirSync } from "node:fs";
import { startOrigin, startWorker } from "../test/harness.mjs";

const ROUNDS = Number(process.env.PORTCULLIS_BENCH_ROUNDS ?? 5);
const REQUESTS = Number(process.env.PORTCULLIS_BENCH_REQUESTS ?? 2000);
const TICKS_PER_SECOND = 100; // USER_HZ on Linux

function workerdPids() {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "workerd";
      } catch {
        return false; // the process ended meanwhile
      }
    });
}

function cpuTicks(pids) {
  let ticks = 0;
  for (const pid of pids) {
    // Fields after the command name: utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return ticks;
}

const origin = await startOrigin();
const before = new Set(workerdPids());
const worker = await startWorker({
  policy: { allowed_hosts: ["localhost"], https_redirect: { https_port: 8443, exempt_prefixes: ["/static"] } },
  origin: origin.url,
});
const pids = workerdPids().filter((pid) => !before.has(pid));
if (pids.length === 0) throw new Error("no workerd process appeared for the Worker");

const classes = {
  redirect: { url: "http://localhost/api/v1/health", status: 301 },
  forwarded: { url: "http://localhost/static/app.js", status: 200 },
};
async function send(kind, count) {
  const { url, status } = classes[kind];
  for (let i = 0; i < count; i++) {
    const response = await worker.fetch(url);
    await response.arrayBuffer();
    if (response.status !== status) throw new Error(`${kind}: expected ${status}, got ${response.status}`);
  }
}

const results = { redirect: [], forwarded: [] };
try {
  for (const kind of Object.keys(classes)) await send(kind, 200); // warm up
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? ["redirect", "forwarded"] : ["forwarded", "redirect"];
    for (const kind of order) {
      const start = cpuTicks(pids);
      await send(kind, REQUESTS);
      const ticks = cpuTicks(pids) - start;
      results[kind].push((ticks / TICKS_PER_SECOND / REQUESTS) * 1e6);
    }
  }
} finally {
  await worker.dispose();
  await origin.close();
}
console.log(JSON.stringify(results));
