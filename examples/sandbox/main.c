/* main.c — paygate-sandbox: the paygate daemon plus WeChat Pay's side (TEST ONLY), for the local sandbox. */
#include <stdio.h>

#include "daemon.h"
#include "wxsandbox.h"

/*
** The same daemon as the gateway's, with one more Lua module for the
** sandbox's scripts: `wechatpay.sandbox`, which holds WeChat Pay's keys and
** signs as WeChat Pay. It exists only in this binary, never in paygate or
** libpaygate.
*/

static char config_path[4096];

static void add_sandbox_module(struct paygate_options *o)
{
	static struct paygate_lua_module modules[] = {
		{ "wechatpay.sandbox", wxsandbox_open, config_path },
		{ NULL, NULL, NULL },
	};
	snprintf(config_path, sizeof config_path, "%s", o->config_path ? o->config_path : "");
	o->lua_modules = modules;
}

int main(int argc, char **argv)
{
	return daemon_main("paygate-sandbox", argc, argv, add_sandbox_module);
}
