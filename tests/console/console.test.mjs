// The web console in a real browser (Debian's chromium, driven by puppeteer-core): an operator
// signs in with a named admin token, finds an order a user paid through the sandbox, refunds it
// with the confirmation step, and watches the refund settle on the order's timeline — by
// keyboard where a keyboard would do it, and at a phone's width. Screenshots land in
// build/test-logs/console-*.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { ROOT, eventually } from '../e2e/harness.mjs';
import { startWorld } from '../e2e/shopenv.mjs';

const TOKEN = 'ops-console-token-0123456789';
const SHOTS = join(ROOT, process.env.BUILD || 'build', 'test-logs');
const shot = (page, name) => page.screenshot({ path: join(SHOTS, `console-${name}.png`), fullPage: true });

let world, gw, browser, dir;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  dir = mkdtempSync(join(tmpdir(), 'paygate-console-'));
  writeFileSync(join(dir, 'ops.token'), TOKEN + '\n');
  world = await startWorld();
  gw = await world.startShop({}, { config: { admin: { tokens: { ops: join(dir, 'ops.token') } } } });
  const as = { headers: { Authorization: 'Bearer ' + TOKEN } };
  for (const [id, name, price, stock] of [[1, 'Tea', 3800, 100], [2, 'Cup', 1200, 50]]) {
    assert.equal((await gw.put(`/admin/products/${id}`, { name, price, stock }, as)).status, 200);
  }
  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (world) await world.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function paidOrder() {
  const user = await world.login(gw);
  const o = await gw.post('/api/orders', { items: [{ product_id: 1, qty: 1 }, { product_id: 2, qty: 2 }] }, { headers: user.auth });
  assert.equal(o.status, 201, o.body);
  const pay = await gw.post(`/api/orders/${o.json.order_no}/pay`, undefined, { headers: user.auth });
  assert.equal(pay.status, 200, pay.body);
  await world.userPays(user, pay.json);
  await eventually(async () => (await gw.get(`/api/orders/${o.json.order_no}`, { headers: user.auth })).json.status === 'PAID', 10000, 100);
  return o.json.order_no;
}

const text = (page, sel) => page.$eval(sel, (el) => el.textContent);

test('an operator signs in, finds an order paid through the sandbox, refunds it after confirming, and watches it settle', async () => {
  const no = await paidOrder();
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 800 });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // The expected refusals (the session asked before sign-in, the wrong token) are HTTP answers, not errors of the page.
  page.on('console', (m) => { if (m.type() === 'error' && !/^Failed to load resource/.test(m.text())) errors.push(m.text()); });

  await page.goto(`http://127.0.0.1:${gw.port}/admin/`);
  await page.waitForSelector('#token');
  // Keyboard only: the token field has the focus; Enter signs in.
  await page.keyboard.type('not-the-token-at-all');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('.login .error').textContent.includes('not a configured admin token'));
  await page.$eval('#token', (el) => { el.value = ''; });
  await page.focus('#token');
  await page.keyboard.type(TOKEN);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('h1') && document.querySelector('h1').textContent === 'Today');
  assert.match(await text(page, '#who'), /Signed in as ops/);
  const cookies = await page.cookies();
  const session = cookies.find((c) => c.name === 'paygate_admin');
  assert.ok(session && session.httpOnly && session.sameSite === 'Strict', JSON.stringify(cookies));
  assert.equal(await page.evaluate(() => document.cookie), '', 'the session cookie is not readable by scripts');
  await page.waitForSelector('.chart svg rect');
  await shot(page, 'overview');

  // Orders: search by the order number, open it.
  await page.click('a[href="#/orders"]');
  await page.waitForSelector('input[name=q]');
  await page.type('input[name=q]', no);
  await page.keyboard.press('Enter');
  await page.waitForSelector(`a[href="#/orders/${no}"]`);
  assert.equal((await page.$$('tbody tr')).length, 1, 'the search finds exactly that order');
  await page.click(`a[href="#/orders/${no}"]`);
  await page.waitForSelector('#refund-amount');
  assert.match(await text(page, 'h1'), new RegExp(`Order ${no}\\s*PAID`));
  const events = await page.$$eval('ol.timeline li', (li) => li.map((x) => x.dataset.event));
  assert.deepEqual(events.slice(0, 3), ['created', 'prepay_requested', 'paid']);
  await shot(page, 'order');

  // Refund 10 yuan with a reason: the confirmation comes first, nothing is sent before it.
  await page.$eval('#refund-amount', (el) => { el.value = ''; });
  await page.type('#refund-amount', '10.00');
  await page.type('#refund-reason', 'one cup broke');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#refund-confirm');
  assert.match(await text(page, '.confirm'), /Refund ¥10\.00 of order .* \(“one cup broke”\)\?/);
  assert.equal((await gw.get(`/admin/orders/${no}`, { headers: { Authorization: 'Bearer ' + TOKEN } })).json.refunds.length, 0);
  await shot(page, 'refund-confirm');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'refund-confirm', 'the confirm button has the focus');
  await page.keyboard.press('Enter');

  // The page follows the refund until WeChat (the sandbox) settles it.
  await page.waitForFunction(() => [...document.querySelectorAll('ol.timeline li')].some((li) => li.dataset.event === 'refunded'),
    { timeout: 30000 });
  const after = await page.$$eval('ol.timeline li', (li) => li.map((x) => [x.dataset.event, x.textContent]));
  const requested = after.find(([e]) => e === 'refund_requested');
  assert.match(requested[1], /¥10\.00.*reason: one cup broke.*by ops/);
  assert.match(await text(page, '#order-amount'), /refunded ¥10\.00/);
  assert.match(await text(page, 'h1'), /PAID/, 'a part refund leaves the order PAID');
  await shot(page, 'refund-settled');
  assert.deepEqual(errors, []);
  await page.close();
});

test('every page works at a phone\'s width without sideways scrolling of the page', async () => {
  const context = await browser.createBrowserContext();            // a browser without the first test's cookie
  const page = await context.newPage();
  await page.setViewport({ width: 375, height: 740, isMobile: true });
  await page.goto(`http://127.0.0.1:${gw.port}/admin/`);
  await page.waitForSelector('#token');
  await page.type('#token', TOKEN);
  await page.keyboard.press('Enter');
  await page.waitForSelector('.chart svg');
  for (const [hash, ready] of [['#/', '.chart svg'], ['#/orders', 'input[name=q]'], ['#/notifications', 'h1'],
    ['#/jobs', 'h1'], ['#/products', 'input[aria-label="stock of product 1"]']]) {
    await page.evaluate((h) => { location.hash = h; }, hash);
    await page.waitForSelector(ready);
    await page.waitForFunction((h) => location.hash === h || h === '#/', {}, hash);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 376, `${hash} is ${wide}px wide at 375px`);
  }
  await page.evaluate(() => { location.hash = '#/'; });
  await page.waitForSelector('.chart svg');
  await shot(page, 'phone');
  // Products are editable: the stock of product 2 changes from the page.
  await page.evaluate(() => { location.hash = '#/products'; });
  const stock = 'input[aria-label="stock of product 2"]';
  await page.waitForSelector(stock);
  await page.$eval(stock, (el) => { el.value = '42'; });
  const buttons = await page.$$('tbody button');
  await buttons[1].click();
  await eventually(async () => (await gw.get('/admin/products', { headers: { Authorization: 'Bearer ' + TOKEN } })).json.products.find((p) => p.id === 2).stock === 42, 5000, 100);
  await context.close();
});

test('the console\'s files carry a strict content policy and hold no data before sign-in', async () => {
  const r = await gw.get('/admin/');
  assert.equal(r.status, 200);
  assert.match(r.headers['content-security-policy'], /default-src 'none'; script-src 'self'/);
  assert.equal(r.headers['x-frame-options'], 'DENY');
  assert.equal((await gw.get('/admin/console/app.js')).status, 200);
  assert.equal((await gw.get('/admin/console/..%2Fconfig.lua')).status, 404);
  assert.equal((await gw.get('/admin/console/../../scripts/init.lua')).status, 404);
  assert.equal((await gw.get('/admin/overview')).status, 401);
  const html = readFileSync(join(ROOT, 'console/index.html'), 'utf8') + readFileSync(join(ROOT, 'console/app.js'), 'utf8');
  assert.doesNotMatch(html, /https?:\/\/(?!www\.w3\.org\/2000\/svg)/, 'nothing is fetched from elsewhere');
});
