// Going live (docs/going-live.md): the systemd unit of examples/systemd/ passes systemd-analyze
// verify; the nginx TLS front of examples/nginx/ serves paygate over HTTPS with admin still
// behind its token; an online backup from POST /admin/backup restores into a working gateway.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, ROOT, eventually, startGateway, startNginx, have } from './harness.mjs';
import { freePort } from './shopenv.mjs';

const TOKEN = 'golive-admin-token-0123456789';

test('the systemd unit passes systemd-analyze verify without a warning', { skip: !have('systemd-analyze') && 'systemd-analyze is not installed' }, () => {
  const d = mkdtempSync(join(tmpdir(), 'paygate-unit-'));
  try {
    // The unit as installed, pointing at this build and the demo config (verify checks that they exist).
    const unit = readFileSync(join(ROOT, 'examples/systemd/paygate.service'), 'utf8')
      .replaceAll('/usr/local/bin/paygate', BIN).replaceAll('/etc/paygate/paygate.conf.lua', join(ROOT, 'examples/paygate.conf.lua'));
    writeFileSync(join(d, 'paygate.service'), unit);
    const r = spawnSync('systemd-analyze', ['verify', join(d, 'paygate.service')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr.trim(), '', 'no warning');
    // It can fail: a misspelt setting is reported.
    writeFileSync(join(d, 'paygate.service'), unit.replace('Restart=on-failure', 'Restart=sometimes'));
    const bad = spawnSync('systemd-analyze', ['verify', join(d, 'paygate.service')], { encoding: 'utf8' });
    assert.match(bad.stderr, /restart specifier/);
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

function get(port, path, headers = {}, method = 'GET', body) {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, path, method, headers, rejectUnauthorized: false }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('the nginx TLS front serves paygate over HTTPS; admin still needs its token there, and the console cookie is Secure', { skip: !have('nginx') && 'nginx is not installed' }, async () => {
  const d = mkdtempSync(join(tmpdir(), 'paygate-nginx-'));
  writeFileSync(join(d, 'ops.token'), TOKEN);
  const gw = await startGateway({
    scripts: { 'init.lua': 'require("paygate").get("/admin/hello", function(req) return 200, { who = req.admin } end)' },
    config: { admin: { tokens: { ops: join(d, 'ops.token') } } },
  });
  let nginx;
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
      '-keyout', join(d, 'privkey.pem'), '-out', join(d, 'fullchain.pem')], { stdio: 'ignore' });
    const [http, tls] = [await freePort(), await freePort()];
    const site = readFileSync(join(ROOT, 'examples/nginx/paygate.conf'), 'utf8')
      .replace('server 127.0.0.1:8080;', `server 127.0.0.1:${gw.port};`)
      .replaceAll('listen 80;', `listen 127.0.0.1:${http};`).replaceAll('listen 443 ssl http2;', `listen 127.0.0.1:${tls} ssl http2;`)
      .replace(/^\s*listen \[::\].*$/gm, '')
      .replaceAll('/etc/ssl/paygate/', d + '/');
    nginx = startNginx(d, site);
    const health = await eventually(async () => { try { return await get(tls, '/healthz'); } catch { return false; } }, 10000, 100);
    assert.equal(health.status, 200);
    assert.equal((await get(tls, '/admin/hello')).status, 401, 'every request is loopback to paygate: the token still counts');
    const ok = await get(tls, '/admin/hello', { Authorization: 'Bearer ' + TOKEN });
    assert.deepEqual([ok.status, JSON.parse(ok.body).who], [200, 'ops']);
    const login = await get(tls, '/admin/login', { 'Content-Type': 'application/json' }, 'POST', JSON.stringify({ token: TOKEN }));
    assert.equal(login.status, 200, login.body);
    assert.match([].concat(login.headers['set-cookie'])[0], /HttpOnly; SameSite=Strict; Secure/);
    assert.equal((await get(tls, '/metrics')).status, 401, 'with tokens configured, a scraper brings one too');
    assert.equal((await get(tls, '/metrics', { Authorization: 'Bearer ' + TOKEN })).status, 200);
  } finally {
    await nginx?.stop();
    await gw.stop();
    rmSync(d, { recursive: true, force: true });
  }
});

test('an online backup (POST /admin/backup, VACUUM INTO) is a consistent copy that a gateway restores from', async () => {
  const scripts = {
    'init.lua': `local app = require "paygate"
app.migration(1, "notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
app.post("/notes", function(req) local n, id = db.exec("INSERT INTO notes(text) VALUES (?)", app.read_json(req).text); return 201, { id = id } end)
app.get("/notes", function(req) return 200, { notes = db.query("SELECT * FROM notes ORDER BY id") } end)`,
  };
  const gw = await startGateway({ scripts });
  const restored = mkdtempSync(join(tmpdir(), 'paygate-restore-'));
  let again;
  try {
    for (const text of ['one', 'two']) assert.equal((await gw.post('/notes', { text })).status, 201);
    const b = await gw.post('/admin/backup', {});
    assert.equal(b.status, 201, b.body);
    assert.ok(b.json.path.startsWith(join(gw.dir, 'paygate.db-backup-')) && existsSync(b.json.path), b.body);
    assert.match(gw.log, /backup written to .* \(asked by loopback\)/);
    assert.equal((await gw.post('/notes', { text: 'after the backup' })).status, 201);
    assert.equal((await gw.request('GET', '/admin/backup')).headers.allow, 'POST');
    // Restore: the backup file becomes the database of a gateway started on it.
    copyFileSync(b.json.path, join(restored, 'paygate.db'));
    again = await startGateway({ dir: restored, scripts });
    const notes = (await again.get('/notes')).json.notes.map((n) => n.text);
    assert.deepEqual(notes, ['one', 'two']);
  } finally {
    if (again) await again.stop();
    await gw.stop();
    rmSync(restored, { recursive: true, force: true });
  }
});
