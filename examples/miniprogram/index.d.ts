// Typings of paygate-miniprogram (paygate.js): the shapes of docs/api.md as the client returns them.

export type OrderStatus = 'CREATED' | 'PAYING' | 'PAID' | 'CLOSED' | 'REFUNDING' | 'REFUNDED';

/** A line the buyer asks for: prices are the server's, never sent. */
export interface Item { product_id: number; qty: number }

export interface OrderLine { product_id: number; name: string; qty: number; price: number; amount: number }

export interface Adjustment { code: string; label: string; amount: number; product_id?: number }

export interface Order {
  order_no: string;
  status: OrderStatus;
  /** What is charged, in fen. */
  amount: number;
  subtotal: number;
  items: OrderLine[];
  adjustments: Adjustment[];
  created_at: string;
  expires_at: string;
  paid_at?: string;
  transaction_id?: string;
  refunded?: number;
  closed_reason?: string;
  pending?: undefined;
}

/** The server does not know yet whether the order was paid: show "checking", ask again later. */
export interface Pending { pending: true; order_no: string; order: Order | null }

export interface Quote { items: OrderLine[]; subtotal: number; adjustments: Adjustment[]; amount: number }

export interface Product {
  id: number; name: string; price: number; stock: number;
  display_price?: number; price_labels?: string[];
}

export interface OrderPage { orders: Order[]; next?: string }

/** The order's other fields, as the shop's rules read them (coupon, ...). */
export type OrderFields = Record<string, unknown>;

/** Every rejection: an Error with a code, and order_no once an order exists. */
export interface PaygateError extends Error {
  /** 'network', 'login_failed', 'unauthorized', 'cancelled', 'payment_failed', or the server's code. */
  code: string;
  status?: number;
  order_no?: string;
  /** What wx said (request, login or requestPayment). */
  errMsg?: string;
  /** createOrder's key: pass it back as idempotencyKey to try the same order again. */
  idempotency_key?: string;
  /** The order as last seen (cancelled, payment_failed, not_payable). */
  order?: Order | null;
  /** login_failed: the code of what failed underneath. */
  reason?: string;
}

/** wx, or anything with its calls (uni, Taro). */
export interface WxLike {
  login(o: { success(r: { code: string }): void; fail(e: { errMsg: string }): void }): unknown;
  request(o: {
    url: string; method?: string; data?: unknown; header?: Record<string, string>; timeout?: number; dataType?: string;
    success(r: { statusCode: number; data: any }): void; fail(e: { errMsg: string }): void;
  }): unknown;
  requestPayment(o: {
    timeStamp: string; nonceStr: string; package: string; signType: string; paySign: string;
    success(r: unknown): void; fail(e: { errMsg: string }): void;
  }): unknown;
  getStorageSync?(key: string): any;
  setStorageSync?(key: string, value: any): void;
  removeStorageSync?(key: string): void;
}

export interface CreateOptions {
  /** The gateway's https:// address (on the mini program's request domain list). */
  baseUrl: string;
  /** Default: the global wx. */
  wxApi?: WxLike;
  /** One wx.request, ms (default 10000). */
  timeoutMs?: number;
  /** After wx.requestPayment succeeded, ask the server this long before answering Pending (default 30000). */
  confirmMs?: number;
  /** After it failed or was cancelled (default 6000). */
  confirmAfterFailMs?: number;
  /** Between two questions (default 1500). */
  pollMs?: number;
  /** POST /api/orders again with the same key after a network failure (default 3). */
  orderRetries?: number;
  retryMs?: number;
  /** Prefix of the storage keys (default 'paygate'). */
  storageKey?: string;
}

export interface Shop {
  login(): Promise<{ token: string; expires_in: number }>;
  products(): Promise<Product[]>;
  quote(items: Item[], extra?: OrderFields): Promise<Quote>;
  createOrder(items: Item[], extra?: OrderFields, options?: { idempotencyKey?: string }): Promise<Order>;
  getOrder(orderNo: string): Promise<Order>;
  orders(options?: { limit?: number; before?: string }): Promise<OrderPage>;
  cancel(orderNo: string): Promise<Order>;
  pay(orderNo: string): Promise<Order | Pending>;
  buy(items: Item[], extra?: OrderFields, options?: { idempotencyKey?: string }): Promise<Order | Pending>;
  resume(options?: { waitMs?: number }): Promise<Order | Pending | null>;
  pendingOrder(): { order_no: string; at: number } | null;
  forget(orderNo?: string): void;
  logout(): void;
}

export function create(options: CreateOptions): Shop;
