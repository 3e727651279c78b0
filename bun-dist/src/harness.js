// Reactor's Bun harness: runs one deployment's `export default { fetch }` module.
//
// Its configuration arrives as one JSON object on stdin, never on the command line
// (which every process can read in /proc/*/cmdline):
//   { "mode": "serve" | "check" | "build" | "lambda", "entry": path, "socket": path,
//     "output": path, "port": number, "env": { KEY: value }, "log_tag": string }
// "check" imports the entrypoint, checks that the default export has `fetch` and exits
// (0, or 3 with Bun's own error text on stderr). "build" writes the entrypoint bundled
// into one file to `output`. "serve" imports and checks, then serves it with Bun.serve on
// the unix socket, the only way into the process. An exception from the handler becomes a
// 500 marked with the x-reactor-harness header (the worker turns it into
// `function_crashed`); functions cannot set that header themselves.
// "lambda" is "serve" inside AWS Lambda behind the Lambda Web Adapter (docs/lambda.md): it
// listens on 127.0.0.1:`port`, and marks every answer `x-reactor-harness: ok` (or
// `crashed`), so that the router tells the function's answers from Lambda's own errors,
// and the first answer of the process `x-reactor-cold-start: true`.
// In "serve", console lines written while a request is handled are tagged
// `\x1e<log_tag>:<n>\x1f<line>`, n being the worker's number for the request
// (x-reactor-invocation, removed before the function sees the request) and log_tag the
// process's secret: the worker logs each line with its request, under its budget, and
// tells a failed request its own lines only. Other output stays untagged.
// Calls between functions: in "serve" the process has no network; a `fetch` of
// `http://NAME.reactor.internal/...` goes to the worker on `call_socket`, with the
// capability the worker gave the request being served (x-reactor-call-capability, removed
// before the function sees the request); the worker stamps the call's context itself. A
// call ends with its invocation (its request's signal) or its own signal. Its request body
// is read whole before it is sent; a callee's redirect is answered as it is (not followed).
// In "lambda" the router gives each request a capability and the URL to call back on
// (x-reactor-call-url, removed too): such a `fetch` goes to `{url}/call{path}` over the
// network, with the capability, and nothing else changes for the function.
import { AsyncLocalStorage } from "node:async_hooks";
import { format } from "node:util";

const MARK = "x-reactor-harness";
const INVOCATION = "x-reactor-invocation";
const CAPABILITY = "x-reactor-call-capability";
const CALL_HOST = "x-reactor-call-host";
const CALL_URL = "x-reactor-call-url";
const config = JSON.parse(await Bun.stdin.text());
const lambda = config.mode === "lambda";
for (const [key, value] of Object.entries(config.env ?? {})) process.env[key] = String(value);

// The request being handled: { id, capability, url, signal } (id null: its console lines
// are not tagged; url: "lambda" only).
const scope = config.mode === "serve" || lambda ? new AsyncLocalStorage() : null;
const tagged = scope !== null && typeof config.log_tag === "string" && config.log_tag !== "";
if (tagged) {
  const prefix = `\x1e${config.log_tag}:`;
  // Installed before the function's module loads, so that it gets these.
  for (const [method, write] of [
    ["log", console.log], ["info", console.info], ["debug", console.debug],
    ["warn", console.warn], ["error", console.error],
  ]) {
    const base = write.bind(console);
    console[method] = (...args) => {
      const id = scope.getStore()?.id;
      if (id === undefined || id === null) return base(...args);
      let text;
      try {
        text = format(...args);
      } catch {
        return base(...args);
      }
      base("%s", text.split("\n").map((line) => `${prefix}${id}\x1f${line}`).join("\n"));
    };
  }
}

// `fetch` of `*.reactor.internal`: a call, through the worker (see above).
if (scope !== null && (typeof config.call_socket === "string" || lambda)) {
  const send = globalThis.fetch.bind(globalThis);
  const internal = (host) => {
    const h = host.toLowerCase().replace(/\.$/, "");
    return h === "reactor.internal" || h.endsWith(".reactor.internal");
  };
  const target = (input) => {
    try {
      return new URL(input instanceof Request ? input.url : String(input));
    } catch {
      return null;
    }
  };
  const call = async (input, init) => {
    const url = target(input);
    // Anything else is Bun's own fetch, untouched.
    if (url === null || !internal(url.hostname)) return send(input, init);
    const request = new Request(input, init);
    const current = scope.getStore();
    if (lambda && !current?.url) {
      return Response.json(
        { error: { code: "call_not_allowed", message: "calls between functions are made while serving a request routed by Reactor, from its own code" } },
        { status: 403 },
      );
    }
    const headers = new Headers(request.headers);
    headers.delete(CAPABILITY);
    headers.delete(CALL_URL);
    if (current?.capability) headers.set(CAPABILITY, current.capability);
    headers.set(CALL_HOST, url.host);
    const signals = [request.signal, current?.signal].filter(Boolean);
    const body = request.method === "GET" || request.method === "HEAD" ? undefined : await request.arrayBuffer();
    const path = `${url.pathname}${url.search}`;
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    try {
      return await send(lambda ? `${current.url}/call${path}` : `http://localhost${path}`, {
        method: request.method,
        headers,
        body,
        redirect: "manual",
        signal,
        ...(lambda ? {} : { unix: config.call_socket }),
      });
    } catch (e) {
      // An abort is the caller's own: it throws, as fetch does. The router out of reach
      // is the platform's: its JSON error, naming where the call went.
      if (!lambda || signal?.aborted) throw e;
      return Response.json(
        { error: { code: "worker_unavailable", message: `the call could not reach the router at ${current.url} (functions.lambda.call_url): ${e?.message ?? e}` } },
        { status: 502 },
      );
    }
  };
  globalThis.fetch = Object.assign(call, { preconnect: send.preconnect });
}

// Bun's own text for an error: build errors (a syntax error, a module not found) come as
// an AggregateError of messages with positions.
function describe(e) {
  if (e && Array.isArray(e.errors) && e.errors.length > 0) {
    return [String(e.message ?? e), ...e.errors.map(describe)].join("\n");
  }
  if (e && e.position && e.position.file) {
    const p = e.position;
    return `${p.file}:${p.line}:${p.column}: ${e.message ?? String(e)}\n    ${p.lineText ?? ""}`;
  }
  if (e instanceof Error) return e.stack || `${e.name}: ${e.message}`;
  return `uncaught: ${String(e)}`;
}

if (config.mode === "build") {
  // Prebundling at deploy: the entrypoint and its imports as one file, which starts
  // faster when the bundle has node_modules (docs/bun.md).
  // `env: "disable"`: process.env stays a run-time lookup, never inlined into the
  // artifact (and the build runs with no env at all).
  const out = await Bun.build({ entrypoints: [config.entry], target: "bun", env: "disable" });
  if (!out.success) {
    for (const log of out.logs) console.error(String(log));
    process.exit(4);
  }
  if (out.outputs.length !== 1) {
    console.error(`bun build produced ${out.outputs.length} files, not one`);
    process.exit(5);
  }
  await Bun.write(config.output, out.outputs[0]);
  process.exit(0);
}

let app;
try {
  const mod = await import(config.entry);
  app = mod.default;
  if (app === null || typeof app !== "object" && typeof app !== "function" || typeof app.fetch !== "function") {
    throw new TypeError(
      `${config.name}: the default export has no fetch method; export default { async fetch(request) { ... } }`,
    );
  }
} catch (e) {
  console.error(describe(e));
  process.exit(3);
}
if (config.mode === "check") process.exit(0);

process.on("uncaughtException", (e) => console.error(`uncaught exception: ${describe(e)}`));
process.on("unhandledRejection", (e) => console.error(`unhandled rejection: ${describe(e)}`));

function crashed(e) {
  const text = describe(e);
  console.error(text);
  return new Response(text.slice(0, 8192), { status: 500, headers: { [MARK]: "crashed" } });
}

const COLD = "x-reactor-cold-start";
let served = 0;
// In "lambda" mode: the marks the router reads (a function cannot set them itself).
function mark(response) {
  if (!lambda) return response;
  const headers = new Headers(response.headers);
  headers.delete(COLD);
  if (!headers.has(MARK)) headers.set(MARK, "ok");
  if (served++ === 0) headers.set(COLD, "true");
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

Bun.serve({
  ...(lambda
    ? { hostname: "127.0.0.1", port: Number(config.port ?? process.env.AWS_LWA_PORT ?? process.env.PORT ?? 8080) }
    : { unix: config.socket }),
  // The worker bounds every invocation; a quiet stream (SSE) must not be cut here.
  idleTimeout: 0,
  maxRequestBodySize: Number.MAX_SAFE_INTEGER,
  fetch(request, server) {
    if (scope === null) return handle(request, server);
    const id = request.headers.get(INVOCATION);
    const capability = request.headers.get(CAPABILITY);
    const url = lambda ? request.headers.get(CALL_URL) : null;
    request.headers.delete(INVOCATION);
    request.headers.delete(CAPABILITY);
    request.headers.delete(CALL_URL);
    const current = {
      id: tagged && id !== null && /^[0-9]{1,19}$/.test(id) ? id : null,
      capability,
      url: url && /^https?:\/\/[^\s?#]+$/.test(url) ? url.replace(/\/+$/, "") : null,
      signal: request.signal,
    };
    return scope.run(current, () => handle(request, server));
  },
  error: (e) => mark(crashed(e)),
});

// One request: the function's answer, or its exception as a marked 500.
async function handle(request, server) {
  try {
    const response = await app.fetch(request, server);
    if (!(response instanceof Response)) {
      throw new TypeError(`fetch returned ${response === null ? "null" : typeof response}, not a Response`);
    }
    if (response.headers.has(MARK)) {
      const headers = new Headers(response.headers);
      headers.delete(MARK);
      return mark(new Response(response.body, { status: response.status, statusText: response.statusText, headers }));
    }
    return mark(response);
  } catch (e) {
    return mark(crashed(e));
  }
}
