// fakewx.mjs — a stubbed `wx` for the mini-program client's specs (miniprogram.test.mjs,
// miniprogram-package.test.mjs): real HTTP to the gateway, login codes and payments played in
// the sandbox, storage in a Map, and fault switches for what goes wrong on a phone.
import { request } from './harness.mjs';
import { APPID } from './shopenv.mjs';

/**
 * The wx object of one WeChat user of `world` (shopenv.mjs): login codes from the sandbox, real HTTP, payment played in
 * the sandbox, storage in `storage` (a Map: pass the same one to play a cold start). Switches:
 *   drop({ match, nth, after })  the nth request (from now) whose "METHOD path" matches fails
 *                                with request:fail; after: true, once the server has answered
 *   expireTokens()               every session issued so far is refused by the server (401)
 *   faults.reject401             every session is refused
 *   faults.loginFails            wx.login fails this many times
 *   faults.payResult             what the user does in the sandbox: SUCCESS, FAIL, CANCEL
 *   faults.payReports            what wx.requestPayment says regardless (e.g. a fail cancel)
 *   faults.payNeverReturns       the payment happens but the app is killed before it returns
 *   faults.slowConfirmation      WeChat's notification of the next payment never comes
 */
export function fakeWx(world, openid, { storage = new Map(), ...faults } = {}) {
  const calls = [];
  const requests = [];
  const drops = [];
  const expired = new Set();
  const issued = [];
  let lastPayOrder = null;
  const wrap = (name, fn) => (opts) => {
    calls.push(name);
    fn(opts).then((r) => opts.success && opts.success(r), (e) => opts.fail && opts.fail(e));
  };
  const mangle = (h) => {
    const t = h && h.Authorization && h.Authorization.replace('Bearer ', '');
    if (t && (faults.reject401 || expired.has(t))) return { ...h, Authorization: 'Bearer x' + t.slice(1) };
    return h;
  };
  return {
    calls, requests, faults, storage,
    drop({ match = /./, nth = 1, after = false }) { drops.push({ match, left: nth, after }); },
    expireTokens() { for (const t of issued) expired.add(t); },
    login: wrap('login', async () => {
      if (faults.loginFails > 0) { faults.loginFails--; throw { errMsg: 'login:fail network error' }; }
      return { code: (await world.sandbox.post('/sandbox/login-code', { openid })).json.code };
    }),
    request: wrap('request', async ({ url, method = 'GET', data, header, timeout }) => {
      const u = new URL(url);
      const what = `${method} ${u.pathname}`;
      requests.push({ what, timeout, header });
      const m = u.pathname.match(/^\/api\/orders\/([^/]+)\/pay$/);
      if (m) lastPayOrder = m[1];
      let drop = null;
      for (const d of drops) if (d.left > 0 && d.match.test(what) && --d.left === 0) drop = d;
      if (drop && !drop.after) throw { errMsg: 'request:fail timeout' };
      let r;
      try {
        r = await request(Number(u.port), method, u.pathname + u.search,
          { body: data, headers: mangle(header), timeout: timeout || 60000 });
      } catch (e) {
        throw { errMsg: /timeout/.test(e.message) ? 'request:fail timeout' : 'request:fail ' + e.message };
      }
      if (drop) throw { errMsg: 'request:fail timeout' };   // the server did it; the answer is lost
      if (u.pathname === '/api/login' && r.json && r.json.token) {
        issued.push(r.json.token);
        expired.delete(r.json.token);   // a new login's session is good (the same second gives the same token)
      }
      return { statusCode: r.status, data: r.json, header: r.headers };
    }),
    requestPayment: (opts) => {
      calls.push('requestPayment');
      (async () => {
        if (faults.slowConfirmation) {
          await world.sandbox.post('/sandbox/faults', { notify_drop: { count: 1, match: lastPayOrder } });
        }
        const prepay_id = opts.package.replace('prepay_id=', '');
        const r = await world.sandbox.post('/sandbox/pay', { prepay_id, openid, result: faults.payResult || 'SUCCESS',
          pay_params: { ...opts, appId: APPID } });   // the mini program's own appid, as WeChat knows it
        if (faults.payNeverReturns) return;
        const errMsg = faults.payReports || r.json.errMsg;
        if (errMsg !== 'requestPayment:ok') opts.fail({ errMsg });
        else opts.success(r.json);
      })().catch((e) => opts.fail({ errMsg: 'requestPayment:fail ' + e.message }));
    },
    getStorageSync: (k) => (storage.has(k) ? structuredClone(storage.get(k)) : ''),
    setStorageSync: (k, v) => { storage.set(k, structuredClone(v)); },
    removeStorageSync: (k) => { storage.delete(k); },
  };
}
