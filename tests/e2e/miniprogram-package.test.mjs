// The mini-program client as a package (examples/miniprogram/): packed with npm, installed
// into a mini-program project from the tarball, laid out as the WeChat developer tool's
// "Build npm" lays it out (the package.json "miniprogram" directory copied to
// miniprogram_npm/<name>/), loaded there with nothing but wx and timers, loaded by Node as
// CommonJS and as an ES module, its typings compiled by tsc (tests/miniprogram/), and the
// uni-app snippet run as shipped against a real gateway and the sandbox.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, cpSync, existsSync, rmSync, mkdirSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import vm from 'node:vm';
import { ROOT } from './harness.mjs';
import { startWorld } from './shopenv.mjs';
import { fakeWx } from './fakewx.mjs';

const PKG = join(ROOT, 'examples/miniprogram');
const TOOLS = join(ROOT, 'tests/miniprogram');
const manifest = JSON.parse(readFileSync(join(PKG, 'package.json'), 'utf8'));
let project, world, gw;

const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

before(async () => {
  // A mini-program project that depends on the packed tarball (no registry needed).
  project = mkdtempSync(join(tmpdir(), 'paygate-mp-project-'));
  const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', project], PKG));
  const tgz = join(project, packed[0].filename);
  writeFileSync(join(project, 'package.json'), JSON.stringify({
    name: 'shop-miniprogram', version: '1.0.0', private: true, dependencies: { [manifest.name]: 'file:' + tgz },
  }));
  run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error'], project);
  world = await startWorld();
  gw = await world.startShop({ order_ttl_s: 600 });
  assert.equal((await gw.put('/admin/products/1', { name: 'Tea', price: 3800, stock: 100 })).status, 200);
});
after(async () => {
  if (world) await world.stop();
  if (project) rmSync(project, { recursive: true, force: true });
});

test('the package has what the mini-program npm build and bundlers look for, and nothing of the tests', () => {
  const files = JSON.parse(run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], PKG))[0].files.map((f) => f.path).sort();
  for (const f of ['package.json', 'miniprogram_dist/index.js', 'esm/index.mjs', 'esm/index.d.mts', 'index.d.ts', 'paygate.js', 'README.md']) {
    assert.ok(files.includes(f), `${f} is packed (${files.join(', ')})`);
  }
  assert.ok(!files.some((f) => f.startsWith('uni-app/') || f === 'build.mjs'));
  assert.equal(manifest.miniprogram, 'miniprogram_dist');
  assert.equal(manifest.main, 'miniprogram_dist/index.js');
  const installed = join(project, 'node_modules', manifest.name);
  const exp = manifest.exports['.'];
  for (const p of [manifest.main, manifest.module, manifest.types, exp.import.default, exp.import.types,
    exp.require.default, exp.require.types]) {
    assert.ok(existsSync(join(installed, p)), `${p} is installed`);
  }
});

test('after "Build npm" the package loads in a mini program\'s module scope, with only wx and timers', () => {
  // The developer tool copies the "miniprogram" directory of each dependency to miniprogram_npm/<name>/.
  const installed = join(project, 'node_modules', manifest.name);
  const out = join(project, 'miniprogram_npm', manifest.name);
  mkdirSync(out, { recursive: true });
  cpSync(join(installed, manifest.miniprogram), out, { recursive: true });
  assert.deepEqual(readdirSync(out), ['index.js'], 'require("paygate-miniprogram") finds index.js');
  const module = { exports: {} };
  const wx = { login() {}, request() {}, requestPayment() {} };
  vm.runInNewContext(readFileSync(join(out, 'index.js'), 'utf8'),
    { module, exports: module.exports, wx, setTimeout, clearTimeout, console }, { filename: 'index.js' });
  const shop = module.exports.create({ baseUrl: 'https://shop.example.com' });   // wx found as a global
  for (const f of ['login', 'products', 'quote', 'createOrder', 'getOrder', 'orders', 'cancel', 'pay', 'buy', 'resume']) {
    assert.equal(typeof shop[f], 'function', f);
  }
  assert.throws(() => module.exports.create({ baseUrl: 'shop.example.com' }), /baseUrl/);
});

test('the client is ES5 plus async/await: what the developer tool\'s enhanced compile takes, or a current WeChat runs as is', () => {
  // A light check instead of a parser pinned to ES2017: the code lines (comments dropped) use
  // none of the later or block-scoped forms the plain "ES6 to ES5" compile mishandles.
  const code = readFileSync(join(PKG, 'paygate.js'), 'utf8').split('\n').filter((l) => !/^\s*\/\//.test(l))
    .map((l) => l.replace(/\/\/.*$/, '').replace(/'(?:[^'\\]|\\.)*'/g, "''")).join('\n');
  for (const [what, re] of [['object or array spread', /\.\.\./], ['optional chaining', /\?\./], ['??', /\?\?/],
    ['arrow functions', /=>/], ['class', /\bclass\b/], ['let/const', /\b(let|const)\s/], ['template literals', /`/]]) {
    assert.doesNotMatch(code, re, what);
  }
  assert.match(code, /async function settle/);
});

test('Node loads the installed package as CommonJS through require and as an ES module through import', () => {
  const out = run('node', ['--input-type=module', '-e', `
    import { createRequire } from 'node:module';
    import * as esm from '${manifest.name}';
    const cjs = createRequire(process.cwd() + '/')('${manifest.name}');
    console.log(JSON.stringify({
      cjs: typeof cjs.create, esm: typeof esm.create, dflt: typeof esm.default.create, distinct: cjs.create !== esm.create,
      resolved: import.meta.resolve('${manifest.name}').replace(/^.*node_modules\\//, ''),
    }));`], project);
  assert.deepEqual(JSON.parse(out), { cjs: 'function', esm: 'function', dflt: 'function', distinct: true,
    resolved: `${manifest.name}/esm/index.mjs` });
});

function tsc(dir) {
  const bin = join(TOOLS, 'node_modules/.bin/tsc');
  if (!existsSync(bin)) {
    run('npm', [existsSync(join(TOOLS, 'package-lock.json')) ? 'ci' : 'install', '--no-audit', '--no-fund', '--loglevel=error'], TOOLS);
  }
  try {
    run(bin, ['-p', dir], dir);
    return { ok: true, out: '' };
  } catch (e) {
    return { ok: false, out: String(e.stdout) + String(e.stderr) };
  }
}

test('the typings compile for an ES module and a CommonJS consumer, and catch a wrong call', () => {
  const dir = join(project, 'ts');
  mkdirSync(dir, { recursive: true });
  const config = (files) => JSON.stringify({ compilerOptions: { strict: true, noEmit: true, module: 'node16',
    moduleResolution: 'node16', target: 'es2020', lib: ['es2020'], types: [], typeRoots: [] }, files });
  writeFileSync(join(dir, 'page.mts'), `
    import paygate, { create, type Order, type Pending, type PaygateError } from '${manifest.name}';
    declare const wx: import('${manifest.name}').WxLike;
    const shop = create({ baseUrl: 'https://shop.example.com', wxApi: wx, confirmMs: 20000 });
    export async function onBuy(): Promise<string> {
      try {
        const r: Order | Pending = await shop.buy([{ product_id: 1, qty: 2 }], { coupon: 'WELCOME' }, { idempotencyKey: 'k1' });
        if (r.pending) return 'checking ' + r.order_no;
        const amount: number = r.amount;
        return r.status + amount;
      } catch (x) {
        const e = x as PaygateError;
        return e.code + (e.order_no ?? '');
      }
    }
    const again = paygate.create({ baseUrl: 'https://x' });
    export const page = again.orders({ limit: 10 }).then((p) => p.orders.map((o) => o.order_no).concat(p.next ?? []));
  `);
  writeFileSync(join(dir, 'app.cts'), `
    import paygate = require('${manifest.name}');
    const shop: paygate.Shop = paygate.create({ baseUrl: 'https://shop.example.com' });
    export const r = shop.resume({ waitMs: 5000 }).then((x) => (x && !x.pending ? x.status : null));
  `);
  writeFileSync(join(dir, 'tsconfig.json'), config(['page.mts', 'app.cts']));
  const good = tsc(dir);
  assert.ok(good.ok, good.out);
  writeFileSync(join(dir, 'bad.mts'), `
    import { create } from '${manifest.name}';
    create({ baseUrl: 'https://x' }).buy([{ product_id: '1', qty: 1 }]);
  `);
  writeFileSync(join(dir, 'tsconfig.json'), config(['bad.mts']));
  const bad = tsc(dir);
  assert.equal(bad.ok, false);
  assert.match(bad.out, /bad\.mts.*error TS2322/);
});

test('the uni-app snippet, installed as shipped, pays and shows the paid screen, and a cancel goes back to the cart', async () => {
  const file = join(project, 'checkout.mjs');
  cpSync(join(PKG, 'uni-app/checkout.js'), file);
  const storage = new Map();
  const uni = fakeWx(world, `oUniApp${process.pid}`, { storage });
  globalThis.uni = uni;
  try {
    const { useShop, checkout, resumeCheckout } = await import(file);
    useShop(`http://127.0.0.1:${gw.port}`, { pollMs: 100, confirmAfterFailMs: 500 });
    const paid = await checkout([{ product_id: 1, qty: 1 }]);
    assert.equal(paid.screen, 'paid', JSON.stringify(paid));
    assert.equal(paid.order.status, 'PAID');
    assert.equal(await resumeCheckout(), null);
    uni.faults.payResult = 'CANCEL';
    const back = await checkout([{ product_id: 1, qty: 1 }]);
    assert.equal(back.screen, 'cart');
    assert.equal(back.message, 'Payment cancelled');
    assert.match(back.order_no, /^PG/);
  } finally {
    delete globalThis.uni;
  }
});
