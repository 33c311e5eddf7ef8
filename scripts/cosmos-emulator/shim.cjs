// A local Cosmos DB (NoSQL API) emulator for etlq's tests: @vercel/cosmosdb-server (npm) with
// the two adjustments the official Rust SDK needs (ADR 0013), plus fault injection.
//
//   node shim.cjs --port 8081 --admin-port 8082
//
// Adjustments, on every request:
//   (a) partition-key-range `id` and `parents` are returned as strings (the server returns
//       numbers; the Rust SDK expects strings);
//   (b) a request carrying x-ms-documentdb-partitionkeyrangeid also gets
//       x-ms-documentdb-query-enablecrosspartition: true.
//
// Admin (plain HTTP on 127.0.0.1:<admin-port>, for tests only):
//   POST /throttle?count=N&retry_after_ms=M   the next N document writes answer 429 with
//                                             x-ms-retry-after-ms: M
//   POST /forbid?on=1|0                       every request answers 401 (a rejected key)
//   POST /stop?ms=T                           for T ms every connection is cut as it is made
//                                             (the server is unreachable; its in-memory data
//                                             is kept, which a real restart would lose)
//   GET  /stats                               {requests, writes, throttled, charge}
"use strict";

const http = require("http");
const { createHttpsServer } = require("@vercel/cosmosdb-server");

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const port = parseInt(arg("--port", "8081"), 10);
const adminPort = parseInt(arg("--admin-port", String(port + 1)), 10);
const host = "127.0.0.1";

const faults = { throttle: 0, retryAfterMs: 50, forbid: false, downUntil: 0 };
const stats = { requests: 0, writes: 0, throttled: 0, charge: 0 };

const server = createHttpsServer({ keepAlive: true });
const [handler] = server.listeners("request");
server.removeAllListeners("request");
const sockets = new Set();
server.on("connection", (s) => {
  if (Date.now() < faults.downUntil) {
    s.destroy();
    return;
  }
  sockets.add(s);
  s.on("close", () => sockets.delete(s));
});

const isDocWrite = (req) =>
  (req.method === "POST" || req.method === "PUT") && /\/docs(\/[^/]+)?$/.test(req.url.split("?")[0]);

server.on("request", (req, res) => {
  stats.requests += 1;
  if (faults.forbid) {
    res.statusCode = 401;
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ code: "Unauthorized", message: "The input authorization token can't serve the request (injected)" }));
    return;
  }
  if (isDocWrite(req)) {
    stats.writes += 1;
    if (faults.throttle > 0) {
      faults.throttle -= 1;
      stats.throttled += 1;
      req.resume();
      res.statusCode = 429;
      res.setHeader("content-type", "application/json");
      res.setHeader("x-ms-retry-after-ms", String(faults.retryAfterMs));
      res.setHeader("x-ms-request-charge", "0");
      res.end(JSON.stringify({ code: "TooManyRequests", message: "Request rate is large (injected)" }));
      return;
    }
  }
  if (req.headers["x-ms-documentdb-partitionkeyrangeid"] !== undefined) {
    req.headers["x-ms-documentdb-query-enablecrosspartition"] = "true";
  }
  const end = res.end.bind(res);
  res.end = (chunk, ...rest) => {
    const charge = parseFloat(res.getHeader("x-ms-request-charge") || "0");
    stats.charge += Number.isFinite(charge) ? charge : 0;
    if (typeof chunk === "string" && chunk.includes("PartitionKeyRanges")) {
      try {
        const body = JSON.parse(chunk);
        if (Array.isArray(body.PartitionKeyRanges)) {
          body.PartitionKeyRanges = body.PartitionKeyRanges.map((r) => ({
            ...r,
            id: String(r.id),
            parents: (r.parents || []).map(String),
          }));
          chunk = JSON.stringify(body);
        }
      } catch (_) {
        // not JSON: leave it
      }
    }
    return end(chunk, ...rest);
  };
  handler(req, res);
});

server.listen(port, host, () =>
  console.log(`cosmos emulator on https://${host}:${port} (admin http://${host}:${adminPort})`),
);

http
  .createServer((req, res) => {
    const url = new URL(req.url, `http://${host}`);
    const n = (k, d) => (url.searchParams.has(k) ? parseInt(url.searchParams.get(k), 10) : d);
    const reply = (body) => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(body));
    };
    if (url.pathname === "/throttle") {
      faults.throttle = n("count", 1);
      faults.retryAfterMs = n("retry_after_ms", 50);
      reply(faults);
    } else if (url.pathname === "/forbid") {
      faults.forbid = n("on", 1) === 1;
      reply(faults);
    } else if (url.pathname === "/stop") {
      const ms = n("ms", 2000);
      faults.downUntil = Date.now() + ms;
      for (const s of sockets) s.destroy();
      reply({ stopped_ms: ms });
    } else if (url.pathname === "/stats") {
      reply(stats);
    } else {
      res.statusCode = 404;
      reply({ message: "no such admin endpoint" });
    }
  })
  .listen(adminPort, host);
