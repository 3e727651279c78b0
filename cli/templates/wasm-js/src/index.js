// {{name}}: a Reactor function as a wasi:http component, built by ComponentizeJS
// (`npm run build`). `{"name": "Reactor"}` in, `{"message": "Hello, Reactor!"}` out.
// `reactor functions dev {{name}} --dir .` rebuilds and redeploys it on every save.

export async function handle(request) {
  const { name = "World" } = await request.json().catch(() => ({}));
  return new Response(JSON.stringify({ message: `Hello, ${name}!` }), {
    headers: { "content-type": "application/json" },
  });
}

// In the component, requests arrive as fetch events; under `node --test` there are none.
if (typeof addEventListener === "function") {
  addEventListener("fetch", (event) => event.respondWith(handle(event.request)));
}
