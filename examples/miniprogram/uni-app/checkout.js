// checkout.js — paygate-miniprogram in a uni-app project (Vue 3 + Vite), built for mp-weixin.
// Save as src/utils/checkout.js after `npm install paygate-miniprogram` (README.md, "uni-app").
// uni has the calls the client needs (login, request, requestPayment, *StorageSync) with wx's
// success/fail shape, so it is passed as wxApi; Vite takes the package's ES module entry.
// tests/e2e/miniprogram-package.test.mjs installs the package and runs this file as it is.
import { create } from 'paygate-miniprogram';

let shop = null;

/** The one client of the app: call once (App.vue onLaunch) with the gateway's https address. */
export function useShop(baseUrl, options) {
  if (!shop) shop = create({ ...options, baseUrl, wxApi: uni });   // eslint-disable-line no-undef
  return shop;
}

/**
 * What the page shows after the buy button: { screen: 'paid', order }, { screen: 'checking',
 * order_no } (the server does not know yet: show "checking the payment", call resumeCheckout()
 * in onShow), { screen: 'cart', message } (cancelled, failed, out of stock ...).
 */
export async function checkout(items, fields) {
  try {
    const r = await shop.buy(items, fields);
    if (r.pending) return { screen: 'checking', order_no: r.order_no };
    return { screen: 'paid', order: r };
  } catch (e) {
    if (e.code === 'cancelled') return { screen: 'cart', message: 'Payment cancelled', order_no: e.order_no };
    return { screen: 'cart', message: e.message, code: e.code, order_no: e.order_no };
  }
}

/** onShow: the payment that was under way when the app was hidden or killed, if any. */
export async function resumeCheckout() {
  const r = await shop.resume({ waitMs: 5000 });
  if (!r) return null;
  if (r.pending) return { screen: 'checking', order_no: r.order_no };
  return r.status === 'PAID' ? { screen: 'paid', order: r } : { screen: 'cart', message: 'The order was closed' };
}
