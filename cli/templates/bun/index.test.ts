// Run with `bun test` in this directory.
import { expect, test } from "bun:test";
import handler from "./index";

test("greets by name", async () => {
  const request = new Request("http://localhost/", {
    method: "POST",
    body: JSON.stringify({ name: "Reactor" }),
  });
  const response = await handler.fetch(request);
  expect(await response.json()).toEqual({ message: "Hello, Reactor!" });
});

test("greets the world without a body", async () => {
  const response = await handler.fetch(new Request("http://localhost/"));
  expect(await response.json()).toEqual({ message: "Hello, World!" });
});
