// Compressed and plain subscribers of one topic, with node's ws, for
// spec/topics_spec.lua. usage: node topics_client.js PORT PATH
// Two subscribers (perMessageDeflate on and off) and a publisher that
// sends, through the app's "pub TOPIC DATA" command, a long compressible
// text, a short text and a binary message. Both must get each whole;
// prints "topics_client.js: all checks passed" and exits 0, or the first
// failure and exits 1.
"use strict";
const WebSocket = require("ws");

const [port, path] = process.argv.slice(2);
const topic = "nodemix";
const url = `ws://127.0.0.1:${port}${path}`;
const long = '{"room": "nodemix", "text": "the same words again and again"} '.repeat(60);
const messages = [
  { data: Buffer.from(long), binary: false },
  { data: Buffer.from("short ü"), binary: false },
  { data: Buffer.alloc(1400, 7), binary: true },
];

function fail(why) {
  console.log("FAIL: " + why);
  process.exit(1);
}
setTimeout(() => fail("timed out"), 20000).unref();

function open(opts, query) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url + (query || ""), opts);
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

function collect(ws, n) {
  return new Promise((resolve) => {
    const got = [];
    ws.on("message", (data, isBinary) => {
      got.push({ data: Buffer.from(data), binary: isBinary });
      if (got.length === n) resolve(got);
    });
  });
}

(async () => {
  const z = await open({ perMessageDeflate: true }, `?sub=${topic}`);
  const plain = await open({ perMessageDeflate: false }, `?sub=${topic}`);
  if (!z.extensions.includes("permessage-deflate")) fail("deflate not agreed: " + z.extensions);
  if (plain.extensions !== "") fail("extension for the plain client: " + plain.extensions);
  const pub = await open({ perMessageDeflate: false });
  const gotZ = collect(z, messages.length);
  const gotPlain = collect(plain, messages.length);
  for (const m of messages) {
    const cmd = Buffer.concat([Buffer.from(`pub ${topic} `), m.data]);
    const reply = new Promise((resolve) => pub.once("message", (d) => resolve(String(d))));
    pub.send(cmd, { binary: m.binary });
    const r = await reply;
    if (r !== "n 2") fail("publish reached " + r);
  }
  for (const [name, got] of [["deflate", await gotZ], ["plain", await gotPlain]]) {
    messages.forEach((m, i) => {
      if (!got[i].data.equals(m.data) || got[i].binary !== m.binary)
        fail(`${name}: message ${i} differs`);
    });
  }
  z.close();
  plain.close();
  pub.close();
  console.log("topics_client.js: all checks passed");
})().catch((e) => fail(String(e)));
