// The SDK against a real `reactor dev`, started by `tests/tests/sdk.rs`, which passes
// REACTOR_URL, REACTOR_TEST_EMAIL and REACTOR_TEST_PASSWORD (a developer of org acme) and
// runs this from sdk/js/test (the seed's `./functions/...` directories are here). The seed's
// SDK quickstart and how-tos run as the seed writes them.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, mkdir, symlink, writeFile } from "node:fs/promises";
import { inspect } from "node:util";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, ReactorError, pack } from "../dist/index.js";

const email = process.env.REACTOR_TEST_EMAIL;
const password = process.env.REACTOR_TEST_PASSWORD;
assert.ok(process.env.REACTOR_URL && email && password, "started by tests/tests/sdk.rs");

const reactor = createClient({ url: process.env.REACTOR_URL });

test("the seed's SDK quickstart", async () => {
  await reactor.auth.signInWithPassword({ email, password });
  reactor.auth.setOrg("acme");

  await reactor.functions.create({ name: "hello", runtime: "bun" });
  await reactor.functions.deploy("hello", { directory: "./functions/hello" });
  await reactor.functions.promote("hello");

  const res = await reactor.functions.invoke("hello", {
    method: "POST",
    body: JSON.stringify({ name: "Reactor" }),
  });
  const body = await res.json();
  console.log(body);
  assert.deepEqual(body, { message: "Hello, Reactor!" });
  assert.equal(res.headers.get("x-reactor-function"), "hello");
});

test("how-to: deploy with environment secrets", async () => {
  process.env.STRIPE_SECRET_KEY ??= "sk_test_51HxSecretFromTheSdk";
  await reactor.functions.env.set("hello", "STRIPE_SECRET_KEY", {
    value: process.env.STRIPE_SECRET_KEY,
    secret: true,
  });
  await reactor.functions.env.set("hello", "STRIPE_PUBLIC_KEY", { value: "pk_live_51Hx" });
  await reactor.functions.deploy("hello", { directory: "./functions/hello-secrets" });
  await reactor.functions.promote("hello");

  const res = await reactor.functions.invoke("hello", { method: "POST", body: "{}" });
  assert.deepEqual(await res.json(), {
    message: "Hello, World!",
    public_key: "pk_live_51Hx",
    secret_key_length: process.env.STRIPE_SECRET_KEY.length,
  });
  // Secrets are never returned.
  const env = await reactor.functions.env.list("hello");
  const secret = env.find((e) => e.key === "STRIPE_SECRET_KEY");
  assert.equal(secret.secret, true);
  assert.equal(secret.value, undefined);
  assert.equal(env.find((e) => e.key === "STRIPE_PUBLIC_KEY").value, "pk_live_51Hx");
});

test("how-to: roll back to a previous deployment", async () => {
  const deployments = await reactor.functions.deployments.list("hello");
  assert.ok(deployments.length >= 2);
  await reactor.functions.rollback("hello", {
    toDeploymentId: deployments[1].id,
  });
  const fn = await reactor.functions.get("hello");
  assert.equal(fn.live_deployment_id, deployments[1].id);
  const res = await reactor.functions.invoke("hello", { method: "POST", body: "{}" });
  assert.deepEqual(await res.json(), { message: "Hello, World!" });
});

test("how-to: a Server-Sent Events response is read chunk by chunk", async () => {
  await reactor.functions.create({ name: "stream-demo", runtime: "bun" });
  await reactor.functions.deploy("stream-demo", { directory: "./functions/stream-demo" });
  await reactor.functions.promote("stream-demo");

  const res = await reactor.functions.invoke("stream-demo", { method: "POST" });
  assert.equal(res.headers.get("content-type"), "text/event-stream");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const arrivals = [];
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    arrivals.push(Date.now());
    text += value;
  }
  const chunks = text
    .split("\n\n")
    .filter((e) => e.startsWith("data: "))
    .map((e) => JSON.parse(e.slice(6)).chunk);
  assert.deepEqual(chunks, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  // Streamed as written (200 ms apart), not buffered into one read.
  assert.ok(arrivals.length >= 5, `${arrivals.length} reads`);
  assert.ok(arrivals.at(-1) - arrivals[0] >= 1000, "the chunks arrived over time");
});

test("errors are thrown as ReactorError: 404 and 429", async () => {
  await assert.rejects(reactor.functions.invoke("no-such-function"), (e) => {
    assert.ok(e instanceof ReactorError);
    assert.equal(e.code, "function_not_found");
    assert.equal(e.status, 404);
    assert.ok(e.requestId, "the request id");
    return true;
  });
  await assert.rejects(reactor.functions.get("no-such-function"), {
    name: "ReactorError",
    code: "function_not_found",
    status: 404,
  });

  await reactor.functions.create({ name: "slow", runtime: "bun" });
  await reactor.functions.deploy("slow", { directory: "./functions/slow" });
  await reactor.functions.promote("slow");
  const first = reactor.functions.invoke("slow");
  await new Promise((r) => setTimeout(r, 300));
  await assert.rejects(reactor.functions.invoke("slow"), (e) => {
    assert.ok(e instanceof ReactorError);
    assert.equal(e.code, "too_many_requests");
    assert.equal(e.status, 429);
    return true;
  });
  assert.deepEqual(await (await first).json(), { slow: true });

  // A developer may not manage users: 403, typed.
  await assert.rejects(reactor.users.list(), { code: "forbidden", status: 403 });
});

test("logs are an async iterator over the SSE stream", async () => {
  const seen = [];
  for await (const entry of reactor.functions.logs("hello", { follow: false })) {
    seen.push(entry);
  }
  assert.ok(
    seen.some((e) => e.kind === "invocation" && e.function === "hello"),
    JSON.stringify(seen.slice(-3)),
  );
  // Following: the next invocation arrives while the stream is open.
  const controller = new AbortController();
  const followed = (async () => {
    for await (const entry of reactor.functions.logs("hello", {
      since: "1s",
      signal: controller.signal,
    })) {
      if (entry.kind === "invocation") return entry;
    }
  })();
  await new Promise((r) => setTimeout(r, 300));
  await reactor.functions.invoke("hello", { method: "POST", body: "{}" });
  const entry = await followed;
  controller.abort();
  assert.equal(entry.function, "hello");
});

test("access tokens are renewed before they expire; sign-out revokes", async () => {
  const session = reactor.auth.getSession();
  // Printing the client never shows its tokens.
  for (const shown of [inspect(reactor, { depth: 5 }), JSON.stringify(reactor)]) {
    assert.ok(!shown.includes(session.accessToken) && !shown.includes(session.refreshToken), shown);
  }
  const before = session.refreshToken;
  // About to expire: the next call renews first.
  session.expiresAt = Date.now() + 1000;
  const list = await reactor.functions.list();
  assert.ok(list.some((f) => f.name === "hello"));
  const renewed = reactor.auth.getSession();
  assert.notEqual(renewed.refreshToken, before);
  assert.ok(renewed.expiresAt > Date.now() + 60_000);

  const other = createClient({ url: process.env.REACTOR_URL });
  await assert.rejects(other.auth.signInWithPassword({ email, password: "not-the-password" }), {
    code: "unauthorized",
    status: 401,
  });
  const stale = renewed.refreshToken;
  await reactor.auth.signOut();
  await assert.rejects(reactor.functions.list(), { code: "unauthorized", status: 401 });
  const again = createClient({ url: process.env.REACTOR_URL });
  again.http.session = { ...renewed, refreshToken: stale, expiresAt: 0 };
  await assert.rejects(again.functions.list(), { code: "unauthorized", status: 401 });
});

test("deploy packs like the CLI: .reactorignore, no .git, no env files", async () => {
  const dir = await mkdtemp(join(tmpdir(), "reactor-sdk-"));
  await mkdir(join(dir, "code"));
  await mkdir(join(dir, "notes"));
  await mkdir(join(dir, ".git"));
  await writeFile(join(dir, "code", "index.ts"), "export default {}");
  await writeFile(join(dir, "notes", "todo.md"), "x");
  await writeFile(join(dir, "debug.log"), "x");
  await writeFile(join(dir, ".git", "HEAD"), "x");
  await writeFile(join(dir, ".env"), "SECRET=1");
  await writeFile(join(dir, ".env.local"), "SECRET=1");
  await writeFile(join(dir, ".reactorignore"), "# comment\nnotes/\n*.log\n");
  await symlink("index.ts", join(dir, "code", "main.ts"));
  const packed = await pack(dir);
  assert.deepEqual(packed.files, [".reactorignore", "code/index.ts", "code/main.ts"]);
  assert.deepEqual(packed.leftOut.sort(), [".env", ".env.local"]);
  assert.match(packed.sha256, /^[0-9a-f]{64}$/);
});
