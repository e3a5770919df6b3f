/* wxsandbox.h — the sandbox's Lua module `wechatpay.sandbox`: WeChat Pay's keys, checks and signatures for scripts. */
#ifndef PAYGATE_WXSANDBOX_H
#define PAYGATE_WXSANDBOX_H

#include <lua.h>

/*
** The open function of the `wechatpay.sandbox` module (a paygate_lua_module
** whose arg is the config file's path, or NULL): pushes load_keys{...} →
** a keys object whose methods verify merchant requests and sign/encrypt
** what WeChat Pay would send, plus uuid() and random id helpers. Key files
** are read in C (relative paths are relative to the config file's
** directory); keys never reach Lua. Returns 1. [-0, +1, e]
*/
int wxsandbox_open(lua_State *L, void *config_path);

#endif
