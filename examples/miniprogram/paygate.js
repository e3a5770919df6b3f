// paygate.js — the mini-program side of paygate: log in, order, pay, and learn the truth.
//
//   const { create } = require('paygate-miniprogram');   // after "Build npm"; or copy this file
//   const shop = create({ baseUrl: 'https://shop.example.com' });
//   const r = await shop.buy([{ product_id: 1, qty: 2 }], { coupon: 'WELCOME' });
//   if (r.pending) { /* paid or not is not known yet: show "checking", call shop.resume() later */ }
//   else { /* r.status === 'PAID' */ }
//
// Everything goes through wx.login, wx.request, wx.requestPayment and wx.*StorageSync (any
// object with those, e.g. uni or Taro, can stand in for wx). What wx.requestPayment says is
// never proof: the server is asked until it knows. Errors are Error objects with `code`
// ('network', 'login_failed', 'unauthorized', 'cancelled', 'payment_failed', or the server's
// code such as 'out_of_stock') and `order_no` once an order exists. Base library 2.10.0 or
// later (wx.request's timeout); the developer tool's "enhanced compile" for async/await.
// Written for the shapes of docs/api.md; README: examples/miniprogram/README.md.

var PAID = { PAID: true, REFUNDING: true, REFUNDED: true };   // the money was taken
var OPEN = { CREATED: true, PAYING: true };                     // not decided yet

function sleep(ms) {
  return new Promise(function (r) { setTimeout(r, ms); });
}

// An Error with a code and whatever else is known (status, order_no, errMsg, ...).
function fail(code, message, extra) {
  var e = new Error(message);
  e.code = code;
  if (extra) Object.keys(extra).forEach(function (k) { if (extra[k] !== undefined) e[k] = extra[k]; });
  return e;
}

// Transient: worth asking again (the network, the server busy or restarting, WeChat slow).
function transient(e) {
  if (e.code === 'login_failed') return e.reason === 'network' || e.status >= 500;
  return e.code === 'network' || e.status >= 500;
}

function create(options) {
  var opts = Object.assign({
    wxApi: typeof wx !== 'undefined' ? wx : undefined,   // eslint-disable-line no-undef
    timeoutMs: 10000,         // one wx.request
    confirmMs: 30000,         // after wx.requestPayment succeeded: ask the server this long
    confirmAfterFailMs: 6000, // after it failed or was cancelled (WeChat may still have taken the money)
    pollMs: 1500,             // between two questions to the server
    orderRetries: 3,          // POST /api/orders again (same Idempotency-Key) after a network failure
    retryMs: 500,
    storageKey: 'paygate',
  }, options);
  var api = opts.wxApi;
  if (!api) throw new Error('paygate: no wx object (pass wxApi)');
  if (typeof opts.baseUrl !== 'string' || !/^https?:\/\//.test(opts.baseUrl)) {
    throw new Error('paygate: baseUrl must be the gateway\'s https:// address');
  }
  var baseUrl = opts.baseUrl.replace(/\/+$/, '');
  var SESSION = opts.storageKey + ':session';
  var PENDING = opts.storageKey + ':pending';
  var session = load(SESSION);   // {token, expires_at (ms)}
  var loggingIn = null;          // the one login in flight, shared by every caller

  function load(key) {
    try { return (api.getStorageSync && api.getStorageSync(key)) || null; } catch (e) { return null; }
  }
  function save(key, value) {
    try {
      if (value == null) { if (api.removeStorageSync) api.removeStorageSync(key); }
      else if (api.setStorageSync) api.setStorageSync(key, value);
    } catch (e) { /* storage full or unavailable: memory still works */ }
  }

  function wxCall(name, params) {
    return new Promise(function (resolve, reject) {
      api[name](Object.assign({}, params, { success: resolve, fail: reject }));
    });
  }

  // One HTTP exchange: resolves with {statusCode, data}; rejects only with code 'network'.
  function send(method, path, data, header) {
    return wxCall('request', {
      url: baseUrl + path, method: method, data: data, timeout: opts.timeoutMs, dataType: 'json',
      header: Object.assign({ 'Content-Type': 'application/json' }, header),
    }).catch(function (e) {
      throw fail('network', (e && e.errMsg) || 'request failed', { errMsg: e && e.errMsg });
    });
  }

  function httpError(res) {
    var body = (res.data && typeof res.data === 'object') ? res.data : {};
    return fail(body.error || 'http_' + res.statusCode, body.message || ('HTTP ' + res.statusCode),
                { status: res.statusCode });
  }

  function validSession() {
    return session && session.token && Date.now() < session.expires_at - 60000 ? session : null;
  }

  // wx.login then POST /api/login; concurrent callers share one. Rejects with 'login_failed'.
  function login() {
    if (loggingIn) return loggingIn;
    loggingIn = wxCall('login', {}).then(function (r) {
      if (!r || !r.code) throw fail('login_failed', 'wx.login gave no code', { errMsg: r && r.errMsg });
      return send('POST', '/api/login', { code: r.code }, {});
    }, function (e) {
      throw fail('login_failed', 'wx.login failed: ' + ((e && e.errMsg) || e), { errMsg: e && e.errMsg });
    }).then(function (res) {
      if (res.statusCode !== 200 || !res.data || !res.data.token) {
        var cause = httpError(res);
        throw fail('login_failed', 'the server refused the login: ' + cause.message,
                   { status: res.statusCode, reason: cause.code });
      }
      session = { token: res.data.token, expires_at: Date.now() + (res.data.expires_in || 0) * 1000 };
      save(SESSION, session);
      return { token: session.token, expires_in: res.data.expires_in };
    }, function (e) {
      throw e.code === 'login_failed' ? e : fail('login_failed', 'could not log in: ' + e.message, { reason: e.code });
    });
    var p = loggingIn;
    p.then(function () { loggingIn = null; }, function () { loggingIn = null; });
    return p;
  }

  function token() {
    var s = validSession();
    return s ? Promise.resolve(s.token) : login().then(function (r) { return r.token; });
  }

  // A call of the API as the logged-in user: logs in first when there is no valid session,
  // and once more after a 401; a second 401 is an 'unauthorized' error.
  function call(method, path, data, header, retried) {
    return token().then(function (t) {
      return send(method, path, data, Object.assign({ Authorization: 'Bearer ' + t }, header)).then(function (res) {
        if (res.statusCode === 401) {
          if (retried) {
            throw fail('unauthorized', 'the server refused the new session too; try again later', { status: 401 });
          }
          if (session && session.token === t) { session = null; save(SESSION, null); }
          return call(method, path, data, header, true);
        }
        if (res.statusCode >= 400) throw httpError(res);
        return res.data;
      });
    });
  }

  function withOrder(e, orderNo) {
    if (e && typeof e === 'object' && e.order_no === undefined) e.order_no = orderNo;
    return e;
  }

  function getOrder(orderNo) {
    return call('GET', '/api/orders/' + encodeURIComponent(orderNo)).catch(function (e) { throw withOrder(e, orderNo); });
  }

  // Ask the server until the order is decided (paid or closed), or `until` passes; transient
  // errors are asked through. Resolves with the last order seen (null if none came back).
  async function settle(orderNo, until, stopWhenOpen) {
    var last = null;
    for (;;) {
      try {
        last = await getOrder(orderNo);
        if (!OPEN[last.status] || stopWhenOpen) return last;
      } catch (e) {
        if (!transient(e)) throw e;
      }
      if (Date.now() + opts.pollMs > until) return last;
      await sleep(opts.pollMs);
    }
  }

  function pending(orderNo, order) {
    return { pending: true, order_no: orderNo, order: order || null };
  }

  function newKey() {
    return Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 12) + Math.random().toString(36).slice(2, 8);
  }

  // POST /api/orders; after a network failure (or 5xx) the same request goes again with the
  // same Idempotency-Key, so the server makes at most one order of it.
  async function createOrder(items, extra, o) {
    var key = (o && o.idempotencyKey) || newKey();
    var body = Object.assign({}, extra, { items: items });
    for (var attempt = 0; ; attempt++) {
      try {
        return await call('POST', '/api/orders', body, { 'Idempotency-Key': key });
      } catch (e) {
        if (!transient(e) || attempt >= opts.orderRetries) {
          e.idempotency_key = key;     // pass it back in (idempotencyKey) to try the same order again
          throw e;
        }
        await sleep(opts.retryMs * (attempt + 1));
      }
    }
  }

  // Pay an existing order and learn the outcome from the server. Resolves with the order when
  // paid (also when it was paid before), or { pending: true, order_no, order } when the
  // server does not know yet; rejects with 'cancelled' or 'payment_failed' when it is unpaid,
  // the server's code otherwise, always with order_no.
  async function pay(orderNo) {
    var params;
    try {
      params = await call('POST', '/api/orders/' + encodeURIComponent(orderNo) + '/pay');
    } catch (e) {
      withOrder(e, orderNo);
      if (e.code !== 'not_payable') throw e;
      var now = await settle(orderNo, 0, true).catch(function () { return null; });   // paid already? that is the answer
      if (now && PAID[now.status]) { forget(orderNo); return now; }
      e.order = now;
      throw e;
    }
    save(PENDING, { order_no: orderNo, at: Date.now() });   // if the app dies now, resume() finds it
    var failed = null;
    try {
      await wxCall('requestPayment', {
        timeStamp: params.timeStamp, nonceStr: params.nonceStr, package: params.package,
        signType: params.signType, paySign: params.paySign,
      });
    } catch (e) {
      failed = e || {};
    }
    var order;
    try {
      order = await settle(orderNo, Date.now() + (failed ? opts.confirmAfterFailMs : opts.confirmMs));
    } catch (e) {
      throw withOrder(e, orderNo);
    }
    if (order && PAID[order.status]) { forget(orderNo); return order; }
    if (order && order.status === 'CLOSED') {
      forget(orderNo);
      throw fail('not_payable', 'the order closed before it was paid', { order_no: orderNo, order: order });
    }
    if (!failed) return pending(orderNo, order);   // WeChat said paid; the server does not know yet
    forget(orderNo);
    var errMsg = failed.errMsg || String(failed);
    var cancelled = /cancel/.test(errMsg);
    throw fail(cancelled ? 'cancelled' : 'payment_failed',
               cancelled ? 'the payment was cancelled' : 'the payment did not go through: ' + errMsg,
               { order_no: orderNo, errMsg: errMsg, order: order });
  }

  function forget(orderNo) {
    var p = load(PENDING);
    if (p && (!orderNo || p.order_no === orderNo)) save(PENDING, null);
  }

  // For onShow: the order that was being paid when the app was hidden or killed, as the server
  // sees it now. null when there is none; the order once decided (paid, or closed); else
  // { pending: true, order_no, order }. o.waitMs: ask for this long while it stays open.
  async function resume(o) {
    var p = load(PENDING);
    if (!p || !p.order_no) return null;
    var order;
    try {
      order = await settle(p.order_no, Date.now() + ((o && o.waitMs) || 0));
    } catch (e) {
      if (e.status === 404) { forget(p.order_no); return null; }   // not this user's any more
      throw e;
    }
    if (order && !OPEN[order.status]) { forget(p.order_no); return order; }
    return pending(p.order_no, order);
  }

  async function buy(items, extra, o) {
    var order = await createOrder(items, extra, o);
    return pay(order.order_no);
  }

  return {
    login: login,
    // The catalogue; with a session, the prices the shop's rules give this user (display_price).
    products: function () {
      var s = validSession();
      return send('GET', '/api/products', undefined, s ? { Authorization: 'Bearer ' + s.token } : {}).then(function (res) {
      if (res.statusCode >= 400) throw httpError(res);
        return res.data.products;
      });
    },
    // What an order would cost: {items, subtotal, adjustments, amount}; extra: coupon ...
    quote: function (items, extra) { return call('POST', '/api/quote', Object.assign({}, extra, { items: items })); },
    createOrder: createOrder,
    getOrder: getOrder,
    // The user's own orders, newest first: {orders, next?}; o: {limit, before}.
    orders: function (o) {
      var q = [];
      if (o && o.limit) q.push('limit=' + encodeURIComponent(o.limit));
      if (o && o.before) q.push('before=' + encodeURIComponent(o.before));
      return call('GET', '/api/orders' + (q.length ? '?' + q.join('&') : ''));
    },
    cancel: function (orderNo) {
      return call('POST', '/api/orders/' + encodeURIComponent(orderNo) + '/cancel').then(function (order) {
        forget(orderNo);
        return order;
      }, function (e) { throw withOrder(e, orderNo); });
    },
    pay: pay,
    buy: buy,
    resume: resume,
    // The order being paid, as saved on this device ({order_no, at}), or null.
    pendingOrder: function () { return load(PENDING); },
    forget: forget,
    logout: function () { session = null; save(SESSION, null); },
  };
}

module.exports = { create: create };
