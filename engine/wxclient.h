/* wxclient.h — the WeChat Pay merchant client: keys from config, signed calls, verified answers, notifications. */
#ifndef PAYGATE_WXCLIENT_H
#define PAYGATE_WXCLIENT_H

#include <stddef.h>

#include <lua.h>

struct engine;
struct wxclient;

/*
** Load the merchant key, APIv3 key, AppSecret and the WeChat Pay keys the
** config names. Returns NULL with err[0] == '\0' when no `wechatpay` table is
** configured, NULL with a message on any error (nothing half-loaded is kept).
** Key files readable by group or others are loaded with a warning.
*/
struct wxclient *wxc_new(struct engine *e, char *err, size_t errlen);
void wxc_free(struct wxclient *w);

/*
** Push the `wechatpay.core` module: request, notification, pay_params,
** login, refresh_certificates, check_order, settings, configured. Expects
** the `json` and `http` tables at the top of the stack (in that order) and
** consumes them. Its functions raise "wechatpay is not configured" when e
** has no client. [-2, +1, e]
*/
void wxc_push_lua(lua_State *L, struct engine *e);

#endif
