// Typings of the ES module entry: the same as ../index.d.ts, with a default export.
import type { CreateOptions, Shop } from '../index.js';
export type * from '../index.js';
export declare function create(options: CreateOptions): Shop;
declare const paygate: { create: typeof create };
export default paygate;
