/* bill.h — WeChat Pay's daily bills: gzip, the SHA1 check and a streaming parser of the bill text. */
#ifndef PAYGATE_BILL_H
#define PAYGATE_BILL_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

/*
** A bill (GET /v3/bill/tradebill, /v3/bill/fundflowbill, then the download) is text: a header
** line of column names, data lines whose every field starts with a backtick, then a summary
** header line and one summary line (its fields backticked too). Amounts are yuan with a
** decimal point. docs/wechatpay.md#bills has the columns and the sources.
*/

#define BILL_MAX_BYTES (512u << 20) /* a bill larger than this once un-gzipped is refused */

/* Un-gzip in[0..n) into malloc'd *out (*outlen bytes, NUL-terminated); at most max bytes.
** 0 on success, -1 with a message (not gzip, truncated, over max). */
int bill_gunzip(const void *in, size_t n, size_t max, char **out, size_t *outlen, char *err, size_t errlen);
/* gzip in[0..n) into malloc'd *out. 0 on success, -1 with a message. */
int bill_gzip(const void *in, size_t n, char **out, size_t *outlen, char *err, size_t errlen);
/* The SHA1 of p[0..n) as 40 lower-case hex digits and a NUL. */
void bill_sha1_hex(const void *p, size_t n, char hex[41]);
/*
** An amount in yuan ("12.34", "-0.5", "`8.00", "0.60000") as an exact integer of units of
** 10^-scale yuan (scale 2: fen). Decimals beyond scale must be zeros; no exponent, no spaces,
** at most 15 integer digits. 0 on success, -1 when s is not such an amount.
*/
int bill_amount(const char *s, size_t n, int scale, int64_t *out);

/*
** Push the `wechatpay.bill` module: open(data, {gzip=, sha1=}) → bill | nil, reason, message;
** amount(s [, scale]) → integer | nil, message; gzip(s); gunzip(s); sha1(s). A bill keeps the
** text outside the Lua heap and hands it out one line at a time: bill:header(), bill:rows()
** (an iterator of field arrays), bill:summary() → names, values; bill:close(). [-0, +1, e]
*/
void bill_push_lua(lua_State *L);

#endif
