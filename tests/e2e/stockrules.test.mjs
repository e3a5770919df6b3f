// Stock rules decide, lualib/shop reserves: the shop with the rules of examples/stock-rules/ and
// with rules written to misbehave, against the WeChat Pay sandbox, over real HTTP.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually } from './harness.mjs';
import { ROOT } from './harness.mjs';
import { startWorld } from './shopenv.mjs';

const rule = (name) => readFileSync(join(ROOT, 'examples/stock-rules', name), 'utf8');
const iso = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, '+00:00');

let world, perUser, saleOpen, saleLater, odd;

before(async () => {
  world = await startWorld();
  const now = Date.now();
  perUser = await world.startShop({ per_user_limit: 2 }, { files: { 'stock.lua': rule('per_user_limit.lua') } });
  saleOpen = await world.startShop({ flash_sale: { product_ids: [3], starts_at: iso(now - 60000), ends_at: iso(now + 3600000), per_order: 1 } },
    { files: { 'stock.lua': rule('flash_sale.lua') } });
  saleLater = await world.startShop({ flash_sale: { product_ids: [3], starts_at: iso(now + 3600000), ends_at: iso(now + 7200000) } },
    { files: { 'stock.lua': rule('flash_sale.lua') } });
  // A rule that misbehaves by product: 6 decides nothing, 7 misspells refuse, 8 tampers with its lines.
  odd = await world.startShop({}, { files: { 'stock.lua': `
local rule = {}
function rule.decide(openid, lines)
  local id = lines[1].product_id
  if id == 6 then return nil end
  if id == 7 then return { refused = "nope" } end
  if id == 8 then lines[1].qty = 50; lines[1].product.price = 1; lines[1].product.stock = 0 end
  return { allow = true }
end
return rule
` } });
  for (const g of [perUser, saleOpen, saleLater, odd]) {
    for (const [id, name, price, stock] of [[1, 'Tea', 3800, 100], [3, 'Pot', 9900, 5], [6, 'Six', 100, 10],
      [7, 'Seven', 100, 10], [8, 'Eight', 700, 10]]) {
      assert.equal((await g.put(`/admin/products/${id}`, { name, price, stock })).status, 200);
    }
  }
});

after(async () => { if (world) await world.stop(); });

const order = (g, user, items) => g.post('/api/orders', { items }, { headers: user.auth });
const product = async (g, id) => (await g.get(`/test/products/${id}`)).json;

async function payAndSeePaid(g, user, o) {
  const pay = await g.post(`/api/orders/${o.order_no}/pay`, undefined, { headers: user.auth });
  assert.equal(pay.status, 200, pay.body);
  await world.userPays(user, pay.json);
  return eventually(async () => {
    const r = (await g.get(`/api/orders/${o.order_no}`, { headers: user.auth })).json;
    return r.status === 'PAID' && r;
  }, 8000, 100);
}

test('a stock rule that only returns a decision (never moves stock) still yields orders that can be paid and marked PAID', async () => {
  const user = await world.login(perUser);
  const before = await product(perUser, 1);
  const r = await order(perUser, user, [{ product_id: 1, qty: 2 }]);
  assert.equal(r.status, 201, r.body);
  const held = await product(perUser, 1);
  assert.equal(held.stock, before.stock - 2, 'the library took the units off the shelf');
  assert.equal(held.reserved, before.reserved + 2);
  const paid = await payAndSeePaid(perUser, user, r.json);
  assert.ok(paid.transaction_id);
  const after = await product(perUser, 1);
  assert.equal(after.sold, before.sold + 2);
  assert.equal(after.reserved, before.reserved);
  assert.equal(after.stock + after.reserved + after.sold, before.stock + before.reserved + before.sold, 'units conserved');
  await eventually(async () => (await perUser.get(`/test/fulfillments/${r.json.order_no}`)).json.status === 'DONE');
});

test('the per-user limit: beyond 2 a day is 409 limit_reached and reserves nothing; another user may still buy', async () => {
  const user = await world.login(perUser);
  assert.equal((await order(perUser, user, [{ product_id: 1, qty: 1 }])).status, 201);
  const before = await product(perUser, 1);
  const r = await order(perUser, user, [{ product_id: 3, qty: 1 }, { product_id: 1, qty: 2 }]);
  assert.equal(r.status, 409, r.body);
  assert.equal(r.json.error, 'limit_reached');
  assert.match(r.json.message, /Tea \(product 1\): at most 1 in this order \(at most 2 per person per day\)/);
  assert.deepEqual(await product(perUser, 1), before);
  assert.equal((await product(perUser, 3)).reserved, 0, 'the other line was not reserved either');
  assert.equal((await order(perUser, user, [{ product_id: 1, qty: 1 }])).status, 201, 'up to the limit is fine');
  const other = await world.login(perUser);
  assert.equal((await order(perUser, other, [{ product_id: 1, qty: 2 }])).status, 201);
});

test('the flash sale: inside the window one unit per order is sold and paid, two are 409 limit_reached', async () => {
  const user = await world.login(saleOpen);
  const before = await product(saleOpen, 3);
  const two = await order(saleOpen, user, [{ product_id: 3, qty: 2 }]);
  assert.equal(two.status, 409, two.body);
  assert.equal(two.json.error, 'limit_reached');
  assert.deepEqual(await product(saleOpen, 3), before);
  const one = await order(saleOpen, user, [{ product_id: 3, qty: 1 }, { product_id: 1, qty: 3 }]);
  assert.equal(one.status, 201, one.body);
  await payAndSeePaid(saleOpen, user, one.json);
  assert.equal((await product(saleOpen, 3)).sold, before.sold + 1);
});

test('the flash sale: before the window 409 sale_not_started, products not on sale sell normally', async () => {
  const user = await world.login(saleLater);
  const before = await product(saleLater, 3);
  const r = await order(saleLater, user, [{ product_id: 3, qty: 1 }]);
  assert.equal(r.status, 409);
  assert.equal(r.json.error, 'sale_not_started');
  assert.deepEqual(await product(saleLater, 3), before);
  assert.equal((await order(saleLater, user, [{ product_id: 1, qty: 5 }])).status, 201);
});

test('a sold-out product is 409 out_of_stock whatever the rule allowed, and nothing stays reserved', async () => {
  const user = await world.login(saleOpen);
  await saleOpen.put('/admin/products/9', { name: 'Last', price: 100, stock: 1 });
  const r = await order(saleOpen, user, [{ product_id: 1, qty: 1 }, { product_id: 9, qty: 2 }]);
  assert.equal(r.status, 409);
  assert.equal(r.json.error, 'out_of_stock');
  assert.match(r.json.message, /Last \(product 9\)/);
  const tea = await product(saleOpen, 1);
  assert.equal(tea.stock + tea.sold + tea.reserved, 100, 'the line that fitted was given back');
  assert.equal((await product(saleOpen, 9)).stock, 1);
});

test('a rule that returns no decision, or a misspelt one, fails the order (500) and reserves nothing', async () => {
  const user = await world.login(odd);
  for (const id of [6, 7]) {
    const before = await product(odd, id);
    const r = await order(odd, user, [{ product_id: id, qty: 1 }]);
    assert.equal(r.status, 500, `product ${id}: ${r.body}`);
    assert.deepEqual(await product(odd, id), before, `product ${id}`);
  }
  assert.match(odd.log, /stock rule's decision is nil/);
  assert.match(odd.log, /unknown field 'refused'/);
});

test('a rule cannot change what is charged or reserved: it sees copies of the lines', async () => {
  const user = await world.login(odd);
  const before = await product(odd, 8);
  const r = await order(odd, user, [{ product_id: 8, qty: 2 }]);
  assert.equal(r.status, 201, r.body);
  assert.equal(r.json.amount, 1400);
  assert.deepEqual(r.json.items.map((i) => [i.qty, i.price]), [[2, 700]]);
  const now = await product(odd, 8);
  assert.equal(now.reserved, before.reserved + 2);
  assert.equal(now.stock, before.stock - 2);
});
