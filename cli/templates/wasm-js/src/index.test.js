// Run with `npm test` (node --test).
import assert from "node:assert/strict";
import { test } from "node:test";
import { handle } from "./index.js";

test("greets by name", async () => {
  const request = new Request("http://localhost/", {
    method: "POST",
    body: JSON.stringify({ name: "Reactor" }),
  });
  assert.deepEqual(await (await handle(request)).json(), { message: "Hello, Reactor!" });
});

test("greets the world without a body", async () => {
  const response = await handle(new Request("http://localhost/"));
  assert.deepEqual(await response.json(), { message: "Hello, World!" });
});
