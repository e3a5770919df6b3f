/* wxsandbox.h — the WeChat Pay side of the protocol, for the local sandbox only: verify merchants, sign, encrypt. */
#ifndef PAYGATE_WXSANDBOX_H
#define PAYGATE_WXSANDBOX_H

#include <lua.h>

struct engine;

/*
** Push the `wechatpay.sandbox` module (registered only when the config sets
** wechatpay_sandbox = true): load_keys{...} → a keys object whose methods
** verify merchant requests and sign/encrypt what WeChat Pay would send, plus
** uuid() and random id helpers. Key files are read in C (relative paths are
** relative to the config file's directory); keys never reach Lua. [-0, +1, e]
*/
void wxs_push_lua(lua_State *L, struct engine *e);

#endif
