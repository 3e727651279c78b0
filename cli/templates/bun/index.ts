// {{name}}: a Reactor function, `Request -> Response`.
// `reactor functions dev {{name}} --dir .` redeploys it on every save.
export default {
  async fetch(request: Request): Promise<Response> {
    const { name = "World" } = await request.json().catch(() => ({}));
    return Response.json({ message: `Hello, ${name}!` });
  },
};
