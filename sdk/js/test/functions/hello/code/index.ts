export default {
  async fetch(request: Request): Promise<Response> {
    const { name = 'World' } = await request.json().catch(() => ({}));
    return Response.json({ message: `Hello, ${name}!` });
  },
};
