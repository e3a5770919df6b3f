// N nodes behind nginx (docs/scaling.md): examples/nginx/paygate-nodes.conf, run by a real nginx
// on 127.0.0.1 in front of three shop gateways on one PostgreSQL database (PAYGATE_TEST_PG).
// Requests spread over the nodes; a login made on one node is valid on the others (the session
// secret is in the database); an order's Idempotency-Key replayed through another node answers
// the same and reserves once; WeChat's notification reaches whichever node nginx picks; a node
// that is stopped is routed around, POSTs included (they never reached it).
//
// The config is the shipped file with its addresses replaced: the three upstream servers by the
// nodes' ports, the listens by free ports on 127.0.0.1, plain HTTP instead of TLS on the front
// (the TLS part is paygate.conf's, which golive.test.mjs serves over HTTPS), and a header
// naming the node that answered, for the test to see.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import crypto from 'node:crypto';
import { ROOT, eventually, pgCreateDatabase, pgDropDatabase, pgUnavailable, request, startNginx, have } from './harness.mjs';
import { freePort, startWorld } from './shopenv.mjs';

const skip = have('nginx') ? pgUnavailable() : 'nginx is not installed';
console.log(skip ? `backends: none; postgresql SKIPPED: ${skip}` : 'backends: postgresql (three nodes behind nginx)');

test('three nodes on one PostgreSQL database behind nginx: spread, shared sessions and idempotency keys, a stopped node routed around', { skip }, async () => {
  const d = mkdtempSync(join(tmpdir(), 'paygate-nginx-nodes-'));
  const dbName = 'paygate_nginx_' + crypto.randomBytes(4).toString('hex');
  const database = pgCreateDatabase(dbName);
  const front = await freePort();
  const world = await startWorld();
  let nginx;
  try {
    // ---- three nodes (one worker each) on the one database; WeChat notifies through nginx ----
    const nodes = [];
    for (let i = 0; i < 3; i++) {
      nodes.push(await world.startShop({}, {
        config: { database, limits: { max_connections_per_client: 0 } },
        wechatpay: { notify_url: `http://127.0.0.1:${front}/wechat/notify/pay`,
          refund_notify_url: `http://127.0.0.1:${front}/wechat/notify/refund` },
      }));
    }
    const nodeOf = (r) => nodes.findIndex((n) => r.headers['x-upstream'] === `127.0.0.1:${n.port}`);
    for (const [id, price] of [[1, 100], [2, 250]]) {
      assert.equal((await nodes[0].put(`/admin/products/${id}`, { name: `product ${id}`, price, stock: 50 })).status, 200);
    }

    // ---- nginx with the shipped config ----
    let upstream = 0;
    const site = readFileSync(join(ROOT, 'examples/nginx/paygate-nodes.conf'), 'utf8')
      .replace(/server 10\.0\.0\.1\d:8080/g, () => `server 127.0.0.1:${nodes[upstream++].port}`)
      .replace('listen 80;', `listen 127.0.0.1:${await freePort()};`)
      .replace('listen 443 ssl http2;', `listen 127.0.0.1:${front};`)
      .replace(/^\s*listen \[::\].*$/gm, '')
      .replace(/^\s*ssl_.*$/gm, '')
      .replace('add_header Strict-Transport-Security "max-age=31536000" always;', 'add_header X-Upstream $upstream_addr always;');
    assert.equal(upstream, 3, 'the example names three nodes');
    nginx = startNginx(d, site);
    const via = (method, path, body, headers = {}) => request(front, method, path, { body, headers });
    await eventually(async () => (await via('GET', '/healthz')).status === 200, 10000, 100);

    // ---- requests spread over the nodes (round robin) ----
    const served = [0, 0, 0];
    for (let i = 0; i < 30; i++) {
      const r = await via('GET', '/api/products');
      assert.equal(r.status, 200, r.body);
      served[nodeOf(r)]++;
    }
    assert.ok(served.every((n) => n >= 5), `every node served some of 30 requests: ${served}`);

    // ---- a login made on one node is valid on every node ----
    const gwFront = { post: (path, body, o = {}) => request(front, 'POST', path, { ...o, body }) };
    const user = await world.login(gwFront);
    const seen = new Set();
    for (let i = 0; i < 6; i++) {
      const r = await via('GET', '/api/orders', undefined, user.auth);
      assert.equal(r.status, 200, `node ${nodeOf(r)}: ${r.body}`);
      seen.add(nodeOf(r));
    }
    assert.equal(seen.size, 3, 'the token was accepted by all three nodes');
    for (const n of nodes) assert.equal((await n.get('/api/orders', { headers: user.auth })).status, 200);
    assert.equal((await via('GET', '/api/orders', undefined, { Authorization: 'Bearer forged' })).status, 401, 'and a bad one by none');

    // ---- an Idempotency-Key replayed through another node answers the same, and orders once ----
    const key = { ...user.auth, 'Idempotency-Key': 'k-' + crypto.randomUUID() };
    const items = { items: [{ product_id: 2, qty: 3 }] };
    const first = await via('POST', '/api/orders', items, key);
    assert.equal(first.status, 201, first.body);
    const replays = [];
    for (let i = 0; i < 10 && replays.length < 2; i++) {
      const r = await via('POST', '/api/orders', items, key);
      if (nodeOf(r) !== nodeOf(first) && !replays.some((x) => nodeOf(x) === nodeOf(r))) replays.push(r);
    }
    assert.equal(replays.length, 2, 'the key was replayed through both other nodes');
    for (const r of replays) {
      assert.equal(r.status, 201, r.body);
      assert.equal(r.json.order_no, first.json.order_no, `node ${nodeOf(r)} replays node ${nodeOf(first)}'s order`);
      assert.equal(r.json.total, first.json.total);
      assert.equal(r.headers['idempotent-replayed'], 'true');
    }
    const p2 = (await nodes[2].get('/test/products/2')).json;
    assert.equal(p2.reserved, 3, 'three units reserved, once');
    const mismatch = await via('POST', '/api/orders', { items: [{ product_id: 2, qty: 1 }] }, key);
    assert.equal(mismatch.status, 422, 'another body under the key is refused on whichever node');

    // ---- a purchase across nodes: WeChat's notification goes through nginx to any node ----
    const payR = await via('POST', `/api/orders/${first.json.order_no}/pay`, undefined, user.auth);
    assert.equal(payR.status, 200, payR.body);
    await world.userPays(user, payR.json);
    const paid = await eventually(async () => {
      const r = await via('GET', `/api/orders/${first.json.order_no}`, undefined, user.auth);
      return r.json?.status === 'PAID' && r;
    }, 15000, 100);
    assert.equal(paid.json.status, 'PAID');

    // ---- a stopped node is routed around: GETs and POSTs (which never reached it) all answered ----
    await nodes[1].stop();
    const after = [0, 0, 0];
    for (let i = 0; i < 12; i++) {
      const r = await via('GET', '/api/products');
      assert.equal(r.status, 200, r.body);
      after[nodeOf(r)]++;
    }
    for (let i = 0; i < 6; i++) {
      const r = await via('POST', '/api/orders', { items: [{ product_id: 1, qty: 1 }] },
        { ...user.auth, 'Idempotency-Key': 'k-' + crypto.randomUUID() });
      assert.equal(r.status, 201, `POST ${i} while node 1 is down: ${r.status} ${r.body}`);
      after[nodeOf(r)]++;
    }
    assert.equal(after[1], 0, `the stopped node served nothing: ${after}`);
    // Passive health check: after max_fails (2) refused connections the node is left out for
    // fail_timeout, instead of costing a refused connection on every third request.
    const refused = readFileSync(join(d, 'error.log'), 'utf8').split('\n')
      .filter((l) => /connect\(\) failed/.test(l) && l.includes(`127.0.0.1:${nodes[1].port}`)).length;
    assert.ok(refused >= 1 && refused <= 2, `connections tried on the stopped node: ${refused} of 18 requests`);
    assert.ok(after[0] >= 4 && after[2] >= 4, `the two live nodes shared the load: ${after}`);
    assert.equal((await nodes[0].get('/test/products/1')).json.reserved, 6, 'six orders, six units: none doubled');

    // ---- per-node metrics are not served through the front ----
    assert.equal((await via('GET', '/metrics')).status, 403);
  } finally {
    await nginx?.stop();
    await world.stop();
    pgDropDatabase(dbName);
    rmSync(d, { recursive: true, force: true });
  }
});
