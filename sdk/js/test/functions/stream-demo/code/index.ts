// Inside your function handler
export default {
  async fetch(): Promise<Response> {
    const stream = new ReadableStream({
      async start(controller) {
        for (let i = 0; i < 10; i++) {
          controller.enqueue(`data: ${JSON.stringify({ chunk: i })}\n\n`);
          await new Promise((r) => setTimeout(r, 200));
        }
        controller.close();
      },
    });
    return new Response(stream, {
      headers: { 'Content-Type': 'text/event-stream' },
    });
  },
};
