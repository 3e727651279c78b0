// Calls between functions from Bun: one module deployed three times (see README.md).
// GET /profile/:id and GET /orders/:id answer a part each; GET /dashboard/:id calls both
// at once with plain fetch (http://profile.reactor.internal/..., the aliases of
// manifest.json's `calls`) and answers them merged. The platform stamps each call with the
// trace, identity and deadline of this request; `baggage` set here reaches the callee.
export default {
  async fetch(request: Request): Promise<Response> {
    const [part, id] = new URL(request.url).pathname.split("/").filter(Boolean);
    const caller = request.headers.get("x-reactor-caller-function");
    switch (part) {
      case "profile":
        return Response.json({ id, name: `user ${id}`, caller, tier: baggage(request, "tier") });
      case "orders":
        return Response.json({ user: id, orders: [{ id: 1, total: 42 }, { id: 2, total: 7 }], caller });
      case "dashboard": {
        const headers = { baggage: "tier=gold" };
        const [profile, orders] = await Promise.all([
          fetch(`http://profile.reactor.internal/profile/${id}`, { headers }),
          fetch(`http://orders.reactor.internal/orders/${id}`),
        ]);
        if (!profile.ok || !orders.ok) {
          return Response.json({ error: [await profile.text(), await orders.text()] }, { status: 502 });
        }
        const trace_id = request.headers.get("traceparent")?.split("-")[1];
        return Response.json({ profile: await profile.json(), orders: (await orders.json()).orders, trace_id });
      }
      default:
        return Response.json({ error: "try /dashboard/:id" }, { status: 404 });
    }
  },
};

// One member of the W3C baggage header.
function baggage(request: Request, key: string): string | null {
  for (const member of (request.headers.get("baggage") ?? "").split(",")) {
    const [k, v] = member.split(";")[0].split("=");
    if (k?.trim() === key) return decodeURIComponent(v?.trim() ?? "");
  }
  return null;
}
