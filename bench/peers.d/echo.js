// The Node peer: ws (Debian's node-ws) in one Node process. /echo sends
// every message back with its kind; /broadcast sends each message to every
// other connection on /broadcast. Usage: node echo.js [PORT] (0 picks one).
'use strict';
const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: Number(process.argv[2] || 0),
  perMessageDeflate: false,
  maxPayload: 16 * 1024 * 1024,
  clientTracking: false,
});
const members = new Set();

wss.on('connection', (ws, req) => {
  if (req.url === '/broadcast') {
    members.add(ws);
    ws.on('message', (data, isBinary) => {
      for (const peer of members) if (peer !== ws) peer.send(data, { binary: isBinary });
    });
    ws.on('close', () => members.delete(ws));
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
});
wss.on('listening', () => {
  console.error(`listening on ws://127.0.0.1:${wss.address().port}/`);
});
