// The Worker → origin path over mutual TLS, inside workerd: the `ORIGIN_MTLS` binding (in
// production Cloudflare's `mtls_certificates` binding; here a workerd service binding to the
// origin as an external HTTPS server with the `worker-client` key pair, which is how workerd
// presents a client certificate) against an origin that admits only its client CA's
// certificates. With PORTCULLIS_MTLS_ORIGIN (the end-to-end stage) that origin is the real
// portcullis-origin; otherwise a local HTTPS server with the origin's TLS rule and certificate.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import https from "node:https";
import { readFileSync } from "node:fs";
import path from "node:path";
import { startWorker } from "./harness.mjs";

const CERTS = process.env.PORTCULLIS_CERTS;
if (!CERTS) {
  throw new Error(
    "PORTCULLIS_CERTS is not set: run through `cargo xtask test`, or point it at .portcullis/certs (`cargo xtask setup` makes them)",
  );
}
const pem = (name) => readFileSync(path.join(CERTS, name), "utf8");
const REAL_ORIGIN = process.env.PORTCULLIS_MTLS_ORIGIN;

let origin;
before(async () => {
  if (REAL_ORIGIN) {
    origin = { url: REAL_ORIGIN, peers: null, refusals: null, close: async () => {} };
    return;
  }
  const peers = [];
  const server = https.createServer(
    {
      key: pem("origin.key"),
      cert: pem("origin.crt"),
      ca: pem("ca.crt"),
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: "TLSv1.2",
    },
    (req, res) => {
      peers.push(req.socket.getPeerCertificate().subject?.CN);
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"status":"ok","database":"ok"}');
    },
  );
  const refusals = [];
  server.on("tlsClientError", (error) => refusals.push(error.message));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  origin = {
    refusals,
    url: `https://localhost:${server.address().port}`,
    peers,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
});
after(async () => {
  await origin.close();
});

/** The binding: the origin as an external HTTPS server, verified against the dev CA. */
function mtlsBinding(keypair) {
  const url = new URL(origin.url);
  const tlsOptions = { trustedCertificates: [pem("ca.crt")] };
  if (keypair) tlsOptions.keypair = keypair;
  return {
    serviceBindings: {
      ORIGIN_MTLS: {
        external: {
          address: `127.0.0.1:${url.port || 443}`,
          // Miniflare's schema tries `{http?}` before `{https}` and the first always matches,
          // dropping `https` (the server would then be spoken to in plain HTTP); a value the
          // `http` branch rejects makes the `https` branch the one that parses.
          http: false,
          https: { tlsOptions, certificateHost: url.hostname },
        },
      },
    },
  };
}

const POLICY = { allowed_hosts: ["localhost"], https_redirect: { https_port: 443 } };

test("the Worker presents worker-client to an origin that requires its client CA", async () => {
  const keypair = { privateKey: pem("worker-client.key"), certificateChain: pem("worker-client.crt") };
  const worker = await startWorker({ policy: POLICY, origin: origin.url, extraBindings: mtlsBinding(keypair) });
  try {
    const response = await worker.fetch("https://localhost/api/v1/health", {
      headers: { "cf-connecting-ip": "192.0.2.60" },
    });
    const body = await response.text();
    assert.equal(response.status, 200, `${body}\n${worker.logs.join("\n")}`);
    assert.match(body, /"status":"ok"/);
    assert.equal(response.headers.get("x-frame-options"), "DENY", "the policy's headers on the origin's answer");
    if (origin.peers) assert.deepEqual(origin.peers, ["worker-client"], "the origin saw the Worker's certificate");
  } finally {
    await worker.dispose();
  }
});

test("without the client certificate the origin refuses the Worker: 502, nothing served", async () => {
  const worker = await startWorker({ policy: POLICY, origin: origin.url, extraBindings: mtlsBinding(null) });
  try {
    const before = origin.peers?.length;
    const response = await worker.fetch("https://localhost/api/v1/health", {
      headers: { "cf-connecting-ip": "192.0.2.61" },
    });
    assert.equal(response.status, 502);
    assert.equal((await response.json()).error, "bad_gateway");
    if (origin.peers) {
      assert.equal(origin.peers.length, before, "no request reached the handler");
      assert.ok(
        origin.refusals.some((m) => m.includes("peer did not return a certificate")),
        `refused for the missing certificate, not another TLS failure: ${origin.refusals}`,
      );
    }
  } finally {
    await worker.dispose();
  }
});
