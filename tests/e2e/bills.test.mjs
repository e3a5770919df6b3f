// bills.test.mjs — money that adds up: WeChat Pay's daily bills from the sandbox (plain and gzip,
// SHA1-checked, parsed into exact fen), the daily reconciliation with every kind of difference
// injected, and the failure paths the sandbox plays: refunds that end ABNORMAL or CLOSED,
// FREQUENCY_LIMITED (429) on the API, 45011 on login, a prepay that fails on a transient cause.
// All against real paygate processes on 127.0.0.1: the shop (scripts/) and the sandbox.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually } from './harness.mjs';
import { startWorld } from './shopenv.mjs';
import { ROOT } from './harness.mjs';

// Test-only routes: the bill calls of lualib/wechatpay as a script makes them.
const SPEC_BILLS = `
local app = require "paygate"
local wechatpay = require "wechatpay"
local bills = require "wechatpay.bills"

local function params(req)
  local q = {}
  for k, v in (req.query or ""):gmatch("([^&=]+)=([^&]*)") do q[k] = v end
  return q
end

local function ask(q)
  local call = q.kind == "fundflow" and wechatpay.fundflowbill or wechatpay.tradebill
  return call{ bill_date = q.date, tar_type = q.gzip and "GZIP" or nil }
end

local function read(b, kind)
  local recs = json.array()
  for r in bills.records(b, kind) do recs[#recs + 1] = r end
  local s = bills.summary(b, kind)
  local info = b:info()
  b:close()
  return { info = info, records = recs, summary = s or json.null }
end

app.get("/spec/bill", function(req)
  local q = params(req)
  local res, why, msg = ask(q)
  if not res then return 200, { error = why, message = msg } end
  if res.status ~= 200 then return 200, { status = res.status, code = res.code } end
  local b, why2, msg2, st = wechatpay.download_bill(q.url or res.body.download_url, q.hash or res.body)
  if not b then return 200, { error = why2, message = msg2, status = st or json.null } end
  local out = read(b, q.kind or "trade")
  out.answer = res.body
  return 200, out
end)

app.get("/spec/bill/answer", function(req)
  local res, why, msg = ask(params(req))
  if not res then return 200, { error = why, message = msg } end
  return 200, { status = res.status, body = res.body or json.null }
end)

app.post("/spec/bill/download", function(req)
  local b = app.read_json(req)
  local bill, why, msg, st = wechatpay.download_bill(b.url, b.hash)
  if not bill then return 200, { error = why, message = msg, status = st or json.null } end
  return 200, read(bill, "trade")
end)
`;

let world, sandbox, gw;

before(async () => {
  world = await startWorld();
  sandbox = world.sandbox;
  const init = readFileSync(join(ROOT, 'scripts/init.lua'), 'utf8') + 'require "test_hooks"\nrequire "spec_bills"\n';
  gw = await world.startShop({ order_ttl_s: 600, reconcile_after_s: 3600, prepay_attempts: 3 },
    { files: { 'spec_bills.lua': SPEC_BILLS, 'init.lua': init } });
  for (const [id, name, price, stock] of [[1, 'Tea', 3800, 1000], [2, 'Cup', 1200, 1000], [3, 'Pot', 9900, 1000]]) {
    assert.equal((await gw.put(`/admin/products/${id}`, { name, price, stock })).status, 200);
  }
});

after(async () => { if (world) await world.stop(); });

const rand = () => crypto.randomBytes(5).toString('hex');
const plain = () => world.login(gw);
const view = async (user, no) => (await gw.get(`/api/orders/${no}`, { headers: user.auth })).json;
const atWeChat = async (no) => (await sandbox.get(`/sandbox/orders/${no}`)).json;
const faults = (spec) => sandbox.post('/sandbox/faults', spec);
const today = async () => (await sandbox.post('/sandbox/clock', { advance_s: 0 })).json.now.slice(0, 10);
const sha1 = (s) => crypto.createHash('sha1').update(s).digest('hex');
const admin = async (no) => (await gw.get('/admin/orders?limit=500')).json.orders.find((o) => o.order_no === no);

async function newOrder(user, product = 2, qty = 1) {
  const r = await gw.post('/api/orders', { items: [{ product_id: product, qty }] }, { headers: user.auth });
  assert.equal(r.status, 201, r.body);
  return r.json;
}

async function pay(user, no) {
  const r = await gw.post(`/api/orders/${no}/pay`, undefined, { headers: user.auth });
  assert.equal(r.status, 200, r.body);
  return r.json;
}

async function paidOrder(user, product = 2, qty = 1) {
  const o = await newOrder(user, product, qty);
  await world.userPays(user, await pay(user, o.order_no));
  await eventually(async () => (await view(user, o.order_no)).status === 'PAID', 8000, 100);
  return o;
}

async function reconcile(date) {
  const before = (await gw.get(`/admin/reconciliation?date=${date}`)).json?.day?.runs ?? 0;
  const q = await gw.post('/admin/reconciliation', { date });
  assert.equal(q.status, 202, q.body);
  return eventually(async () => {
    const r = await gw.get(`/admin/reconciliation?date=${date}`);
    return r.status === 200 && r.json.day.runs > before && r.json.day.status !== 'PENDING' && r.json;
  }, 20000, 100);
}

// ---- bills ----

test('the sandbox trade bill, plain and gzip, reads into exact fen with WeChat\'s columns and a matching SHA1', async () => {
  const user = await plain();
  const o = await paidOrder(user, 3, 1);                 // 99.00 yuan
  const date = await today();
  const text = (await sandbox.get(`/sandbox/bills/${date}`)).body;
  assert.match(text, /^交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,/);
  const plainBill = (await gw.get(`/spec/bill?date=${date}`)).json;
  const gzBill = (await gw.get(`/spec/bill?date=${date}&gzip=1`)).json;
  for (const b of [plainBill, gzBill]) {
    assert.equal(b.error, undefined, JSON.stringify(b));
    assert.equal(b.answer.hash_type, 'SHA1');
    assert.equal(b.info.sha1, b.answer.hash_value);
    const line = b.records.find((r) => r.out_trade_no === o.order_no);
    assert.ok(line, 'the order is in the bill');
    assert.equal(line.total, 9900);
    assert.equal(line.settlement_total, 9900);
    assert.equal(line.fee, 59000);                    // 0.60% of 99.00 = 0.59 yuan = 59 fen = 59000 thousandths
    assert.equal(line.trade_state, 'SUCCESS');
    assert.equal(line.transaction_id, (await atWeChat(o.order_no)).transaction_id);
    assert.equal(b.summary.count, b.records.length);
    assert.equal(b.summary.total, b.records.reduce((s, r) => s + r.total, 0));
  }
  assert.equal(plainBill.info.sha1, sha1(text), 'the hash is over the text (after gzip is undone)');
  assert.deepEqual(plainBill.records, gzBill.records);
});

test('the fund flow bill reads too: income, the fee taken, the running balance in fen', async () => {
  const user = await plain();
  const o = await paidOrder(user, 2, 1);
  const b = (await gw.get(`/spec/bill?date=${await today()}&kind=fundflow&gzip=1`)).json;
  assert.equal(b.error, undefined, JSON.stringify(b));
  const mine = b.records.filter((r) => r.voucher_no === o.order_no);
  assert.deepEqual(mine.map((r) => [r.business_type, r.direction, r.amount]), [['交易', 'in', 1200], ['扣除交易手续费', 'out', 7]]);
  assert.equal(b.summary.count, b.records.length);
  assert.equal(b.summary.income - b.summary.expense, b.records[b.records.length - 1].balance);
});

test('a downloaded bill whose SHA1 is not the one WeChat gave is an error, and a bad hash is refused before asking', async () => {
  const date = await today();
  const wrong = (await gw.get(`/spec/bill?date=${date}&gzip=1&hash=${'0'.repeat(40)}`)).json;
  assert.equal(wrong.error, 'hash_mismatch', JSON.stringify(wrong));
  const none = (await gw.get(`/spec/bill?date=${date}&hash=xyz`)).json;
  assert.equal(none.error, 'invalid');
  const a = (await gw.get(`/spec/bill/answer?date=${date}`)).json.body;
  const elsewhere = (await gw.post('/spec/bill/download', { url: 'http://127.0.0.1:1/v3/billdownload/file?token=x', hash: a })).json;
  assert.equal(elsewhere.error, 'invalid', 'a signed request goes only to the configured WeChat Pay host');
});

test('tomorrow\'s bill does not exist yet (NO_STATEMENT_EXIST), and the admin API will not queue it', async () => {
  const r = (await gw.get('/spec/bill/answer?date=2999-01-01')).json;
  assert.equal(r.status, 400);
  assert.equal(r.body.code, 'NO_STATEMENT_EXIST');
  assert.equal((await gw.post('/admin/reconciliation', { date: '2999-01-01' })).status, 400);
  assert.equal((await gw.post('/admin/reconciliation', { date: '2026-13-01' })).status, 400);
  assert.equal((await gw.get('/admin/reconciliation?date=nope')).status, 400);
});

// ---- reconciliation ----

test('a day with every kind of difference: each found and classified, the safe ones settled, re-runs idempotent', async () => {
  const user = await plain();
  const date = await today();
  const ok = await paidOrder(user, 2, 1);
  // B: paid at WeChat, the notification never came (and the reconciler waits an hour)
  const b = await newOrder(user, 2, 2);
  await faults({ notify_drop: { count: 1, match: b.order_no } });
  await world.userPays(user, await pay(user, b.order_no));
  assert.equal((await atWeChat(b.order_no)).trade_state, 'SUCCESS');
  const c = await paidOrder(user, 2, 1);                  // C: dropped from the bill
  const d = await paidOrder(user, 2, 1);                  // D: another amount in the bill
  const f = await newOrder(user, 2, 1);                   // F: PAYING here, "paid" only in the bill
  await pay(user, f.order_no);
  const unknown = 'PGNOTOURS' + rand();                   // E: a payment that is not ours
  const fee = await paidOrder(user, 2, 1);                // a fee that is not the line's rate
  const tx = await paidOrder(user, 2, 1);                 // another transaction_id in the bill
  // a refund that succeeds, and one that ends ABNORMAL
  const g = await paidOrder(user, 1, 1);
  const h = await paidOrder(user, 1, 1);
  await faults({ refund_abnormal: { count: 1, match: h.order_no } });
  const rg = await gw.post(`/admin/orders/${g.order_no}/refund`, { reason: 'spec' });
  const rh = await gw.post(`/admin/orders/${h.order_no}/refund`, { reason: 'spec' });
  assert.equal(rg.status, 202, rg.body);
  assert.equal(rh.status, 202, rh.body);
  await eventually(async () => (await view(user, g.order_no)).status === 'REFUNDED', 10000, 100);
  await eventually(async () => (await admin(h.order_no)).refunds[0].status === 'ABNORMAL', 10000, 100);
  // refunds the bill has otherwise: succeeded at WeChat but its notification lost (still PROCESSING
  // here: the refund query waits a minute), missing from the bill, another amount, unknown here
  const kOrder = await paidOrder(user, 2, 1);
  await faults({ notify_drop: { count: 1, match: 'RF' } });
  const rk = await gw.post(`/admin/orders/${kOrder.order_no}/refund`, {});
  assert.equal(rk.status, 202, rk.body);
  await eventually(async () => (await atWeChat(kOrder.order_no)).refunds[0]?.status === 'SUCCESS', 10000, 100);
  assert.equal((await admin(kOrder.order_no)).refunds[0].status, 'PROCESSING');
  const lOrder = await paidOrder(user, 2, 1);
  const rl = await gw.post(`/admin/orders/${lOrder.order_no}/refund`, {});
  const mOrder = await paidOrder(user, 2, 1);
  const rm = await gw.post(`/admin/orders/${mOrder.order_no}/refund`, {});
  await eventually(async () => (await view(user, lOrder.order_no)).status === 'REFUNDED' &&
                               (await view(user, mOrder.order_no)).status === 'REFUNDED', 10000, 100);
  const strangerRefund = 'RFNOTOURS' + rand();
  // (the operator's view: GET /api/orders/{no} would ask WeChat itself)
  assert.equal((await admin(b.order_no)).status, 'PAYING', 'B is not paid here before the reconciliation');

  assert.equal((await sandbox.post('/sandbox/bills/tamper', {
    bill_date: date, drop: [c.order_no, rl.json.out_refund_no], amount: { [d.order_no]: 1, [rm.json.out_refund_no]: 5 },
    fee: { [fee.order_no]: 300 }, transaction_id: { [tx.order_no]: '4200000000000000000000000001' },
    extra: [{ out_trade_no: unknown, total: 500 }, { out_trade_no: f.order_no, total: f.amount }],
    extra_refunds: [{ out_refund_no: strangerRefund, out_trade_no: ok.order_no, refund: 100 }],
    summary: { count: 999 },
  })).status, 200);

  const first = await reconcile(date);
  assert.equal(first.day.status, 'DONE', JSON.stringify(first.day));
  const kinds = (r) => Object.fromEntries(r.items.map((i) => [`${i.kind}:${i.ref}`, i.status]));
  const k = kinds(first);
  assert.equal(k[`paid_only_at_wechat:${b.order_no}`], 'SETTLED', JSON.stringify(first.items, null, 1));
  assert.equal(k[`missing_at_wechat:${c.order_no}`], 'OPEN');
  assert.equal(k[`amount_mismatch:${d.order_no}`], 'OPEN');
  assert.equal(k[`unknown_order:${unknown}`], 'OPEN');
  assert.equal(k[`paid_only_at_wechat:${f.order_no}`], 'OPEN', 'WeChat\'s query says NOTPAY: the bill alone never pays an order');
  assert.equal(k[`refund_abnormal:${rh.json.out_refund_no}`], 'OPEN');
  assert.equal(k['summary_mismatch:count'], 'OPEN');
  assert.equal(k[`fee_mismatch:${fee.order_no}`], 'OPEN');
  assert.equal(k[`transaction_mismatch:${tx.order_no}`], 'OPEN');
  assert.equal(k[`refund_state:${rk.json.out_refund_no}`], 'SETTLED', 'asked WeChat, applied like its notification');
  assert.equal(k[`refund_missing_at_wechat:${rl.json.out_refund_no}`], 'OPEN');
  assert.equal(k[`refund_amount_mismatch:${rm.json.out_refund_no}`], 'OPEN');
  assert.equal(k[`refund_unknown:${strangerRefund}`], 'OPEN');
  // every kind the reconciliation knows was found
  const found = new Set(first.items.map((i) => i.kind));
  for (const kind of ['paid_only_at_wechat', 'unknown_order', 'amount_mismatch', 'transaction_mismatch', 'missing_at_wechat',
    'fee_mismatch', 'refund_unknown', 'refund_amount_mismatch', 'refund_state', 'refund_abnormal',
    'refund_missing_at_wechat', 'summary_mismatch']) assert.ok(found.has(kind), 'kind found: ' + kind);
  const feeItem = first.items.find((i) => i.kind === 'fee_mismatch');
  assert.deepEqual([feeItem.bill_amount, feeItem.local_amount], [300000, 7000], '3.00 yuan charged, 0.07 due (thousandths of a fen)');
  assert.equal(k[`missing_at_wechat:${ok.order_no}`], undefined, 'an order that adds up is no difference');
  assert.equal(Object.keys(k).filter((x) => x.includes(g.order_no) || x.includes(rg.json.out_refund_no)).length, 0);
  const fItem = first.items.find((i) => i.ref === f.order_no);
  assert.match(fItem.outcome, /notpay/);
  const dItem = first.items.find((i) => i.ref === d.order_no);
  assert.deepEqual([dItem.bill_amount, dItem.local_amount], [1, d.amount]);
  assert.match(first.items.find((i) => i.kind === 'refund_abnormal').detail, /another account|offline/);

  // the safe one went through the state machine: B is PAID, as if the reconciler had asked
  assert.equal((await admin(b.order_no)).status, 'PAID');
  assert.equal((await admin(f.order_no)).status, 'PAYING');
  assert.equal((await admin(kOrder.order_no)).status, 'REFUNDED');
  const log = (await gw.get(`/test/notification_log/${b.order_no}`)).json.log;
  assert.ok(log.some((l) => l.kind === 'query' && l.outcome === 'paid'), JSON.stringify(log));

  // the figures
  assert.equal(first.day.differences, first.items.length);
  assert.equal(first.day.settled, 2);
  assert.equal(first.day.open, first.items.length - 2);
  assert.ok(first.day.bill_payments >= 6 && first.day.bill_refunds >= 2, JSON.stringify(first.day));
  assert.ok(first.day.local_payments >= 6);
  assert.match(first.day.bill_sha1, /^[0-9a-f]{40}$/);

  // again: the same rows, nothing settled twice
  const again = await reconcile(date);
  assert.deepEqual(again.items.map((i) => [i.id, i.kind, i.ref, i.status]), first.items.map((i) => [i.id, i.kind, i.ref, i.status]));
  assert.equal(again.day.settled, 2);
  assert.equal(again.day.runs, first.day.runs + 1);

  // the bill put right: what no longer differs is RESOLVED, the rest stays
  await sandbox.request('DELETE', '/sandbox/bills/tamper');
  const third = await reconcile(date);
  const k3 = kinds(third);
  assert.equal(k3[`missing_at_wechat:${c.order_no}`], 'RESOLVED');
  assert.equal(k3[`amount_mismatch:${d.order_no}`], 'RESOLVED');
  assert.equal(k3[`unknown_order:${unknown}`], 'RESOLVED');
  assert.equal(k3['summary_mismatch:count'], 'RESOLVED');
  for (const ref of [fee.order_no, tx.order_no, rl.json.out_refund_no, rm.json.out_refund_no, strangerRefund]) {
    assert.ok(third.items.filter((i) => i.ref === ref).every((i) => i.status === 'RESOLVED'), ref);
  }
  assert.equal(k3[`paid_only_at_wechat:${b.order_no}`], 'SETTLED');
  assert.equal(k3[`refund_abnormal:${rh.json.out_refund_no}`], 'OPEN');
  assert.equal(k3[`refund_state:${rk.json.out_refund_no}`], 'SETTLED');
  assert.equal(k3[`paid_only_at_wechat:${f.order_no}`], 'RESOLVED', 'F is no longer in the bill');
  assert.equal(third.day.open, 1, 'left: the ABNORMAL refund');

  const list = (await gw.get('/admin/reconciliation')).json.days;
  assert.ok(list.some((x) => x.bill_date === date && x.status === 'DONE'));
});

test('FREQUENCY_LIMITED on the bill calls: the job backs off and retries within its budget, then the day is done', async () => {
  const date = await today();
  await faults({ rate_limited: { count: 2, match: '/v3/bill/tradebill' } });
  const r = await reconcile(date);
  // the run that was refused is recorded FAILED with why; the job's next attempts get it done
  const done = await eventually(async () => {
    const x = (await gw.get(`/admin/reconciliation?date=${date}`)).json;
    return x.day.status === 'DONE' && x;
  }, 20000, 200);
  assert.ok(done.day.runs >= r.day.runs + 2, `runs ${done.day.runs} after ${r.day.runs}`);
  assert.equal((await sandbox.get('/sandbox/faults')).json.active.rate_limited, undefined, 'both 429s were used');
});

test('a day whose job used up its budget (dead) can still be run again by the operator', async () => {
  const t = new Date(Date.parse(await today() + 'T00:00:00+08:00') - 86400000);
  const date = new Date(t.getTime() + 8 * 3600000).toISOString().slice(0, 10);     // yesterday, Beijing
  const key = `reconcile_bills:${date}`;
  await faults({ rate_limited: { count: 10, match: '/v3/bill/tradebill' } });
  assert.equal((await gw.post('/admin/reconciliation', { date })).status, 202);
  await eventually(async () => (await gw.get(`/test/jobs/${key}`)).json.job?.attempts >= 1, 10000, 100);
  await eventually(async () => {                                               // its last attempt, now
    await gw.post(`/test/jobs/${key}/due`, { attempts: 15 });
    return (await gw.get(`/test/jobs/${key}`)).json.job?.state === 'dead';
  }, 10000, 200);
  const failed = (await gw.get(`/admin/reconciliation?date=${date}`)).json.day;
  assert.equal(failed.status, 'FAILED');
  assert.match(failed.error, /429 FREQUENCY_LIMITED/);
  await faults({ rate_limited: false });
  const r = await gw.post('/admin/reconciliation', { date });
  assert.equal(r.json.queued, true, r.body);
  await eventually(async () => (await gw.get(`/admin/reconciliation?date=${date}`)).json.day.status === 'DONE', 10000, 100);
});

// ---- refunds that do not succeed ----

test('a refund that ends ABNORMAL: shown with what to do, refund_failed told once, never sent again, settled at WeChat later', async () => {
  const user = await plain();
  const o = await paidOrder(user, 2, 1);
  await faults({ refund_abnormal: { count: 1, match: o.order_no } });
  const r = await gw.post(`/admin/orders/${o.order_no}/refund`, { reason: 'spec abnormal' });
  assert.equal(r.status, 202, r.body);
  const a = await eventually(async () => { const x = await admin(o.order_no); return x.refunds[0].status === 'ABNORMAL' && x; }, 10000, 100);
  assert.equal(a.status, 'REFUNDING');
  assert.match(a.refunds[0].action, /Do not start it again/);
  const ev = await eventually(async () => {
    const e = (await gw.get(`/test/order_events/${o.order_no}`)).json.events.filter((x) => x.event === 'refund_failed');
    return e.length === 1 && e;
  }, 5000, 100);
  const data = JSON.parse(ev[0].data);
  assert.equal(data.refund.status, 'ABNORMAL');
  assert.match(data.action, /another account/);
  // no second refund of the same money while it is ABNORMAL, and WeChat was asked once
  const again = await gw.post(`/admin/orders/${o.order_no}/refund`, {});
  assert.equal(again.status, 409, again.body);
  assert.equal((await atWeChat(o.order_no)).refunds.length, 1);
  // the merchant sends it to another account at WeChat Pay: REFUND.SUCCESS comes, the order is REFUNDED
  const res = await sandbox.post(`/sandbox/refunds/${r.json.out_refund_no}/resolve`, { status: 'SUCCESS' });
  assert.equal(res.status, 200, res.body);
  await eventually(async () => (await view(user, o.order_no)).status === 'REFUNDED', 10000, 100);
  const events = (await gw.get(`/test/order_events/${o.order_no}`)).json.events.map((e) => e.event);
  assert.deepEqual(events.filter((e) => e.startsWith('refund')), ['refund_requested', 'refund_failed', 'refunded']);
});

test('a refund WeChat closes (REFUND.CLOSED from the sandbox): the order is PAID again with nothing refunded, refund_failed told', async () => {
  const user = await plain();
  const o = await paidOrder(user, 2, 1);
  await faults({ refund_closed: { count: 1, match: o.order_no } });
  const r = await gw.post(`/admin/orders/${o.order_no}/refund`, {});
  assert.equal(r.status, 202, r.body);
  await eventually(async () => (await admin(o.order_no)).refunds[0].status === 'CLOSED', 10000, 100);
  const v = await view(user, o.order_no);
  assert.equal(v.status, 'PAID');
  assert.equal(v.refunded, undefined);
  const n = (await sandbox.get(`/sandbox/notifications?ref=${r.json.out_refund_no}`)).json.notifications;
  assert.ok(n.some((x) => x.event_type === 'REFUND.CLOSED'), JSON.stringify(n));
  await eventually(async () => (await gw.get(`/test/order_events/${o.order_no}`)).json.events.some((e) => e.event === 'refund_failed'), 5000, 100);
  // the money can be refunded again
  const again = await gw.post(`/admin/orders/${o.order_no}/refund`, {});
  assert.equal(again.status, 202, again.body);
  await eventually(async () => (await view(user, o.order_no)).status === 'REFUNDED', 10000, 100);
});

// ---- rate limits and transient prepay failures ----

test('FREQUENCY_LIMITED on the refund call: the submit job backs off and the refund goes through, sent once', async () => {
  const user = await plain();
  const o = await paidOrder(user, 2, 1);
  await faults({ rate_limited: { count: 2, match: '/v3/refund/domestic/refunds' } });
  const r = await gw.post(`/admin/orders/${o.order_no}/refund`, {});
  assert.equal(r.status, 202, r.body);
  await eventually(async () => (await view(user, o.order_no)).status === 'REFUNDED', 15000, 200);
  assert.equal((await atWeChat(o.order_no)).refunds.length, 1);
  assert.equal((await sandbox.get('/sandbox/faults')).json.active.rate_limited, undefined, 'both 429s were met');
});

test('errcode 45011 on login answers 429 rate_limited, and the same wx.login code works afterwards', async () => {
  const code = (await sandbox.post('/sandbox/login-code', { openid: 'oLimit' + rand() })).json.code;
  await faults({ login_rate_limited: { count: 1 } });
  const r = await gw.post('/api/login', { code });
  assert.equal(r.status, 429, r.body);
  assert.equal(r.json.error, 'rate_limited');
  const ok = await gw.post('/api/login', { code });
  assert.equal(ok.status, 200, ok.body);
});

for (const [name, fault] of [
  ['a 5xx', { system_error: { count: 2 } }],
  ['FREQUENCY_LIMITED (429)', { rate_limited: { count: 2 } }],
  ['a signature probe', { probe: { count: 1 } }],
  ['a timeout (WeChat took it, the answer came too late)', { timeout: { count: 1, ms: 2600 } }],
]) {
  test(`a prepay that fails on ${name} is asked again with the same out_trade_no inside the pay call`, async () => {
    const user = await plain();
    const o = await newOrder(user, 2, 1);
    const spec = Object.fromEntries(Object.entries(fault).map(([k, v]) => [k, { ...v, match: '/v3/pay/transactions/jsapi' }]));
    await faults(spec);
    const params = await pay(user, o.order_no);          // 200 despite the failure
    const w = await atWeChat(o.order_no);
    assert.equal(w.prepays.length, 1, 'one prepay at WeChat: ' + JSON.stringify(w.prepays));
    assert.equal(params.package, 'prepay_id=' + w.prepays[0].prepay_id);
    await world.userPays(user, params);
    await eventually(async () => (await view(user, o.order_no)).status === 'PAID', 8000, 100);
  });
}

test('a prepay that keeps failing gives the client 502 after prepay_attempts tries; the order is kept and can be paid', async () => {
  const user = await plain();
  const o = await newOrder(user, 2, 1);
  await faults({ system_error: { count: 3, match: '/v3/pay/transactions/jsapi' } });
  const r = await gw.post(`/api/orders/${o.order_no}/pay`, undefined, { headers: user.auth });
  assert.equal(r.status, 502, r.body);
  assert.equal(r.json.error, 'upstream_error');
  assert.equal((await sandbox.get('/sandbox/faults')).json.active.system_error, undefined, 'exactly three attempts');
  await world.userPays(user, await pay(user, o.order_no));
  await eventually(async () => (await view(user, o.order_no)).status === 'PAID', 8000, 100);
});

// Last: it moves the sandbox's business clock.
test('a bill\'s download URL expires after 5 minutes, like WeChat\'s', async () => {
  const date = await today();
  const a = (await gw.get(`/spec/bill/answer?date=${date}`)).json.body;
  const fresh = (await gw.post('/spec/bill/download', { url: a.download_url, hash: a })).json;
  assert.equal(fresh.error, undefined, JSON.stringify(fresh));
  await sandbox.post('/sandbox/clock', { advance_s: 301 });
  const late = (await gw.post('/spec/bill/download', { url: a.download_url, hash: a })).json;
  assert.equal(late.error, 'http_error', JSON.stringify(late));
  assert.equal(late.status, 400);
  assert.match(late.message, /INVALID_REQUEST/);
});
