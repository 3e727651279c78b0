// `reactor-bench bun-hop`: a Bun process that takes requests as binary frames on a unix
// socket instead of HTTP/1.1, to measure what such a hop could serve (not used by the
// worker). Usage: bun framed.js ENTRY SOCKET.
//
// Every frame is a little-endian u32 length, then the payload. Several requests travel
// on one connection at once (the id pairs each answer with its request), and the answers
// of a batch go out in one write.
//   request:  u32 id, u8 method length, method, u16 path length, path, u16 header count,
//             (u16 name length, name, u16 value length, value)*, u32 body length, body
//   response: u32 id, u16 status, u16 header count, (headers as above),
//             u32 body length, body
const [entry, socketPath] = process.argv.slice(2);
const app = (await import(entry)).default;
const enc = new TextEncoder();
const dec = new TextDecoder();
const EMPTY = new Uint8Array(0);

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

function parse(frame) {
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  let at = 0;
  const id = dv.getUint32(at, true);
  at += 4;
  const ml = frame[at];
  at += 1;
  const method = dec.decode(frame.subarray(at, at + ml));
  at += ml;
  const pl = dv.getUint16(at, true);
  at += 2;
  const path = dec.decode(frame.subarray(at, at + pl));
  at += pl;
  const count = dv.getUint16(at, true);
  at += 2;
  const headers = [];
  for (let i = 0; i < count; i++) {
    const nl = dv.getUint16(at, true);
    at += 2;
    const name = dec.decode(frame.subarray(at, at + nl));
    at += nl;
    const vl = dv.getUint16(at, true);
    at += 2;
    headers.push([name, dec.decode(frame.subarray(at, at + vl))]);
    at += vl;
  }
  const bl = dv.getUint32(at, true);
  at += 4;
  // A copy: the chunk it came in is not ours after this call.
  const body = bl > 0 ? frame.slice(at, at + bl) : null;
  return { id, method, path, headers, body };
}

function encode(id, response, body) {
  const names = [];
  let size = 4 + 4 + 2 + 2 + 4 + body.length;
  for (const [name, value] of response.headers) {
    const n = enc.encode(name);
    const v = enc.encode(value);
    names.push(n, v);
    size += 4 + n.length + v.length;
  }
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  let at = 0;
  dv.setUint32(at, size - 4, true);
  at += 4;
  dv.setUint32(at, id, true);
  at += 4;
  dv.setUint16(at, response.status, true);
  at += 2;
  dv.setUint16(at, names.length / 2, true);
  at += 2;
  for (const part of names) {
    dv.setUint16(at, part.length, true);
    at += 2;
    out.set(part, at);
    at += part.length;
  }
  dv.setUint32(at, body.length, true);
  at += 4;
  out.set(body, at);
  return out;
}

function flush(socket) {
  const st = socket.data;
  st.scheduled = false;
  if (st.out.length === 0 && st.pending === null) return;
  let data = st.pending ?? EMPTY;
  if (st.out.length > 0) {
    const total = st.out.reduce((n, b) => n + b.length, data.length);
    const all = new Uint8Array(total);
    all.set(data, 0);
    let at = data.length;
    for (const b of st.out) {
      all.set(b, at);
      at += b.length;
    }
    data = all;
    st.out = [];
  }
  const written = socket.write(data);
  st.pending = written < data.length ? data.subarray(Math.max(written, 0)) : null;
}

async function handle(socket, request) {
  const st = socket.data;
  let frame;
  try {
    const init = { method: request.method, headers: request.headers };
    if (request.body !== null) init.body = request.body;
    const response = await app.fetch(new Request(`http://localhost${request.path}`, init));
    frame = encode(request.id, response, new Uint8Array(await response.arrayBuffer()));
  } catch (e) {
    frame = encode(request.id, new Response(null, { status: 500 }), enc.encode(String(e)));
  }
  st.out.push(frame);
  st.inflight -= 1;
  // The last answer of a batch writes them all; one still working does not hold the
  // others back longer than this turn of the event loop.
  if (st.inflight === 0) flush(socket);
  else if (!st.scheduled) {
    st.scheduled = true;
    setImmediate(() => flush(socket));
  }
}

Bun.listen({
  unix: socketPath,
  socket: {
    open(socket) {
      socket.data = { buf: EMPTY, out: [], pending: null, inflight: 0, scheduled: false };
    },
    data(socket, chunk) {
      const st = socket.data;
      const buf = st.buf.length > 0 ? concat(st.buf, chunk) : chunk;
      const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      let at = 0;
      const batch = [];
      while (buf.length - at >= 4) {
        const len = dv.getUint32(at, true);
        if (buf.length - at - 4 < len) break;
        batch.push(parse(buf.subarray(at + 4, at + 4 + len)));
        at += 4 + len;
      }
      st.buf = at === buf.length ? EMPTY : buf.slice(at);
      st.inflight += batch.length;
      for (const request of batch) handle(socket, request);
    },
    drain(socket) {
      flush(socket);
    },
  },
});
