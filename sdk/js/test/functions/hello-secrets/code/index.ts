// The seed's hello, telling which of its env keys it was given (never their values).
export default {
  async fetch(request: Request): Promise<Response> {
    const { name = 'World' } = await request.json().catch(() => ({}));
    return Response.json({
      message: `Hello, ${name}!`,
      public_key: process.env.STRIPE_PUBLIC_KEY ?? null,
      secret_key_length: process.env.STRIPE_SECRET_KEY?.length ?? 0,
    });
  },
};
