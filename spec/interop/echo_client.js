// An independent client for the interop spec: node's ws library talks to
// moonport's echo app at the URL given as the only argument.
//
// Every message must come back identical, with its kind (text or binary):
// short text and binary, 1 MiB of each, and empty ones. Then it closes with
// 1000 and expects the server to answer 1000. Prints one "ok" line per
// check and a final summary; exits 0 only if everything held, 1 on a
// mismatch or a timeout, 3 if the ws module cannot be loaded (the spec must
// fail then, not skip).
'use strict';

let WebSocket;
try {
  WebSocket = require('ws');
} catch (err) {
  console.error(`echo_client.js: cannot load ws: ${err.message}`);
  process.exit(3);
}
const crypto = require('crypto');

const checks = [
  ['short text', 'hello, w\u00f6rld \u2603', false],
  ['short binary', Buffer.from(Array.from({ length: 256 }, (_, i) => i)), true],
  // 2-byte characters, so the UTF-8 crosses every frame and read boundary.
  ['1 MiB text', '\u00e9'.repeat(1 << 19), false],
  ['1 MiB binary', crypto.randomBytes(1 << 20), true],
  ['empty text', '', false],
  ['empty binary', Buffer.alloc(0), true],
];

function fail(why) {
  console.error(`echo_client.js: ${why}`);
  process.exit(1);
}

if (process.argv.length !== 3) {
  console.error('usage: echo_client.js ws://HOST:PORT/echo');
  process.exit(2);
}

setTimeout(() => fail('timed out'), 60000).unref();

const ws = new WebSocket(process.argv[2], { maxPayload: 64 << 20 });
let next = 0;

function sendNext() {
  const [, message] = checks[next];
  ws.send(message);
}

ws.on('open', sendNext);
ws.on('error', (err) => fail(`error: ${err.message}`));

ws.on('message', (data, isBinary) => {
  const [name, message, binary] = checks[next];
  if (isBinary !== binary) {
    fail(`${name}: sent ${binary ? 'binary' : 'text'}, got back ${isBinary ? 'binary' : 'text'}`);
  }
  const same = binary ? Buffer.compare(data, message) === 0 : data.toString('utf8') === message;
  if (!same) {
    fail(`${name}: got back ${data.length} bytes that differ from the ${
      Buffer.byteLength(message)} sent`);
  }
  console.log(`ok ${name}`);
  next += 1;
  if (next < checks.length) {
    sendNext();
  } else {
    ws.close(1000, 'done');
  }
});

ws.on('close', (code, reason) => {
  if (next < checks.length) {
    fail(`closed after ${next} checks: ${code} ${reason}`);
  }
  if (code !== 1000) {
    fail(`closed with 1000, the server answered ${code} ${reason}`);
  }
  console.log('ok closed with 1000');
  console.log(`echo_client.js: all ${checks.length + 1} checks passed`);
  process.exit(0);
});
