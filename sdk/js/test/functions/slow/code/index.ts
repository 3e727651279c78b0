// Answers after 1.5 s: with max_concurrency 1, a second request meanwhile gets 429.
export default {
  async fetch(): Promise<Response> {
    await new Promise((r) => setTimeout(r, 1500));
    return Response.json({ slow: true });
  },
};
