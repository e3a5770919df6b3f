// tlsfront.mjs — a TLS front for tests: a private CA made with the openssl command, and an
// HTTPS server (HTTP/2 and HTTP/1.1, or HTTP/1.1 only) on 127.0.0.1 that passes each request
// to a plain-HTTP server (the WeChat Pay sandbox) and counts what the TLS layer saw.
//
//   const pki = makePki(dir);                          // pki.ca, pki.certs.good, pki.certs.expired, ...
//   const front = await startTlsFront({ ...pki.certs.good, target: sandbox.port });
//   front.url                                          // https://localhost:PORT
//   front.stats                                        // connections, handshakes, resumed, versions, ...
//   await front.close();

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';
import https from 'node:https';
import http2 from 'node:http2';

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A key and a certificate signing request for `cn` with the subjectAltNames `san`. */
function leafRequest(dir, name, cn) {
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`,
    '-out', `${name}.csr`, '-subj', `/CN=${cn}`], dir);
}

/** A leaf certificate for `san` signed by the CA `ca` (valid `days`; -1: it expired yesterday). */
function signLeaf(dir, name, ca, san, days = 30) {
  leafRequest(dir, name, san.split(',')[0].replace(/^DNS:|^IP:/, ''));
  writeFileSync(join(dir, `${name}.ext`),
    `basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial',
    '-days', String(days), '-extfile', `${name}.ext`, '-out', `${name}.pem`], dir);
  return { key: readFileSync(join(dir, `${name}.key`)), cert: readFileSync(join(dir, `${name}.pem`)),
    certFile: join(dir, `${name}.pem`) };
}

function makeCa(dir, name) {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`,
    '-out', `${name}.pem`, '-subj', `/CN=paygate test ${name}`, '-days', '30',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  return join(dir, `${name}.pem`);
}

/**
 * The private PKI of a test, in dir: `ca` (the CA file a gateway trusts), `otherCa` (a CA the
 * gateway does not know) and server certificates: good (localhost and 127.0.0.1, by ca),
 * wrongName (wrong.example, by ca), expired (by ca, expired yesterday), selfSigned (localhost,
 * its own issuer), unknownCa (localhost, by otherCa); `leafOnly`, a PEM file with a server
 * certificate and no CA; `notPem`, a file that is no certificate.
 */
export function makePki(dir) {
  mkdirSync(dir, { recursive: true });
  const ca = makeCa(dir, 'ca');
  const otherCa = makeCa(dir, 'other-ca');
  const SAN = 'DNS:localhost,IP:127.0.0.1';
  const certs = {
    good: signLeaf(dir, 'good', 'ca', SAN),
    wrongName: signLeaf(dir, 'wrong-name', 'ca', 'DNS:wrong.example'),
    expired: signLeaf(dir, 'expired', 'ca', SAN, -1),
    unknownCa: signLeaf(dir, 'unknown-ca', 'other-ca', SAN),
  };
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'self.key',
    '-out', 'self.pem', '-subj', '/CN=localhost', '-days', '30', '-addext', `subjectAltName=${SAN}`], dir);
  certs.selfSigned = { key: readFileSync(join(dir, 'self.key')), cert: readFileSync(join(dir, 'self.pem')) };
  const notPem = join(dir, 'not-a-bundle.pem');
  writeFileSync(notPem, 'these are not the certificates you are looking for\n');
  return { dir, ca, otherCa, certs, leafOnly: certs.good.certFile, notPem };
}

const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'http2-settings', 'te',
  'proxy-connection', 'host']);

function forward(target, req, res, opts) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const headers = {};
    for (const [k, v] of Object.entries(req.headers)) if (!k.startsWith(':') && !HOP.has(k)) headers[k] = v;
    const up = http.request({ host: '127.0.0.1', port: target, method: req.method, path: req.url, headers }, (ur) => {
      const body = [];
      ur.on('data', (c) => body.push(c));
      ur.on('end', () => {
        const out = {};
        for (const [k, v] of Object.entries(ur.headers)) if (!HOP.has(k)) out[k] = v;
        if (opts.close && req.httpVersionMajor === 1) out.connection = 'close';
        res.writeHead(ur.statusCode, out);
        res.end(Buffer.concat(body));
      });
    });
    up.on('error', (e) => { res.writeHead(502); res.end(String(e)); });
    up.end(Buffer.concat(chunks));
  });
}

/**
 * An HTTPS server on 127.0.0.1. opts: key, cert; target (a plain-HTTP port to pass requests to)
 * or handler(req, res); h2 (default true: HTTP/2 offered by ALPN beside HTTP/1.1); minVersion,
 * maxVersion, ciphers (Node's TLS options); delayMs (before answering); close (HTTP/1.1: close
 * the connection after each answer). stats: connections (TLS handshakes completed), resumed,
 * versions and alpn (counts by value), open and maxOpen (TCP connections), tlsErrors, requests.
 */
export async function startTlsFront(opts) {
  const stats = { connections: 0, resumed: 0, versions: {}, alpn: {}, open: 0, maxOpen: 0, tcp: 0, tlsErrors: 0,
    requests: 0 };
  const handle = (req, res) => {
    stats.requests++;
    const go = () => (opts.handler ? opts.handler(req, res) : forward(opts.target, req, res, opts));
    if (opts.delayMs) setTimeout(go, opts.delayMs); else go();
  };
  const tlsOpts = { key: opts.key, cert: opts.cert, minVersion: opts.minVersion || 'TLSv1.2',
    maxVersion: opts.maxVersion || 'TLSv1.3', ...(opts.ciphers ? { ciphers: opts.ciphers } : {}) };
  const server = opts.h2 === false ? https.createServer(tlsOpts, handle)
    : http2.createSecureServer({ ...tlsOpts, allowHTTP1: true }, handle);
  server.on('connection', (s) => {
    stats.tcp++;
    stats.open++;
    stats.maxOpen = Math.max(stats.maxOpen, stats.open);
    s.on('close', () => stats.open--);
  });
  server.on('secureConnection', (s) => {
    stats.connections++;
    if (s.isSessionReused()) stats.resumed++;
    const v = s.getProtocol();
    stats.versions[v] = (stats.versions[v] || 0) + 1;
    const a = s.alpnProtocol || 'none';
    stats.alpn[a] = (stats.alpn[a] || 0) + 1;
  });
  server.on('tlsClientError', () => { stats.tlsErrors++; });
  // A server-side session cache, as nginx's ssl_session_cache: clients that resume by session id
  // (TLS 1.2 without tickets, which libcurl does not ask for) find their session again.
  const sessions = new Map();
  server.on('newSession', (id, data, cb) => { sessions.set(id.toString('hex'), data); cb(); });
  server.on('resumeSession', (id, cb) => cb(null, sessions.get(id.toString('hex')) || null));
  const sockets = new Set();
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    port, stats, url: `https://localhost:${port}`,
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}
