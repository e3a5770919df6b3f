// paygate.js — the mini-program side of paygate. Copy into your mini program (e.g. utils/paygate.js).
//
//   const paygate = require('../../utils/paygate.js');
//   const shop = paygate.create({ baseUrl: 'https://shop.example.com' });
//   const order = await shop.buy([{ product_id: 1, qty: 2 }]);   // login, order, pay, confirm
//   if (order.status === 'PAID') { ... }
//   const price = await shop.quote(items, { coupon: 'WELCOME' });  // the price first (nothing reserved)
//   await shop.buy(items, { coupon: 'WELCOME' });                   // the same fields go with the order
//
// Everything goes through wx.login, wx.request and wx.requestPayment; nothing else is needed.
// The result of wx.requestPayment is NOT proof of payment: buy() asks the server afterwards,
// and the server asks WeChat Pay when it has not heard yet.

function promisify(wxApi, options) {
  return new Promise((resolve, reject) => wxApi({ ...options, success: resolve, fail: reject }));
}

function create({ baseUrl, wxApi = (typeof wx !== 'undefined' ? wx : undefined), pollMs = 1500, pollTimes = 10 }) {
  if (!wxApi) throw new Error('paygate: no wx object');
  let token = null;

  async function call(method, path, data, headers = {}) {
    const res = await promisify(wxApi.request, {
      url: baseUrl + path, method, data,
      header: { 'Content-Type': 'application/json', ...(token ? { Authorization: 'Bearer ' + token } : {}), ...headers },
    });
    if (res.statusCode === 401 && token && path !== '/api/login') {   // session expired: log in once more
      token = null;
      await login();
      return call(method, path, data, headers);
    }
    if (res.statusCode >= 400) {
      const body = res.data || {};
      const err = new Error(body.message || ('HTTP ' + res.statusCode));
      err.code = body.error;
      err.status = res.statusCode;
      throw err;
    }
    return res.data;
  }

  async function login() {
    const { code } = await promisify(wxApi.login, {});
    const r = await call('POST', '/api/login', { code });
    token = r.token;
    return r;
  }

  // A random key per purchase attempt: retrying the same attempt never makes a second order.
  function idempotencyKey() {
    return Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 12);
  }

  async function waitForResult(orderNo) {
    let order;
    for (let i = 0; i < pollTimes; i++) {
      order = await call('GET', '/api/orders/' + orderNo);
      if (order.status !== 'PAYING' && order.status !== 'CREATED') return order;
      await new Promise((r) => setTimeout(r, pollMs));
    }
    return order;
  }

  return {
    login,
    products: () => call('GET', '/api/products').then((r) => r.products),
    // What an order would cost: {items, subtotal, adjustments, amount}. extra: the order's other fields (coupon ...).
    async quote(items, extra = {}) {
      if (!token) await login();
      return call('POST', '/api/quote', { ...extra, items });
    },
    createOrder: (items, key = idempotencyKey(), extra = {}) =>
      call('POST', '/api/orders', { ...extra, items }, { 'Idempotency-Key': key }),
    getOrder: (orderNo) => call('GET', '/api/orders/' + orderNo),
    cancel: (orderNo) => call('POST', '/api/orders/' + orderNo + '/cancel'),

    // Pay an existing order: ask the server for the signed parameters, let WeChat take the
    // payment, then confirm with the server. Resolves with the order as the server sees it;
    // a cancelled payment resolves with the still-unpaid order and `cancelled: true`.
    async pay(orderNo) {
      const params = await call('POST', '/api/orders/' + orderNo + '/pay');
      try {
        await promisify(wxApi.requestPayment, {
          timeStamp: params.timeStamp, nonceStr: params.nonceStr, package: params.package,
          signType: params.signType, paySign: params.paySign,
        });
      } catch (e) {
        const order = await call('GET', '/api/orders/' + orderNo);
        return { ...order, cancelled: /cancel/.test((e && e.errMsg) || '') };
      }
      return waitForResult(orderNo);
    },

    async buy(items, extra = {}) {
      if (!token) await login();
      const order = await this.createOrder(items, undefined, extra);
      return this.pay(order.order_no);
    },
  };
}

module.exports = { create };
