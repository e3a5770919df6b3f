/* fixture.h — one paygate engine for the fuzz targets that need one: scripts in tests/fuzz/scripts, WeChat Pay configured to a closed port. */
#ifndef PAYGATE_FUZZ_FIXTURE_H
#define PAYGATE_FUZZ_FIXTURE_H

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "paygate.h"

static struct event_base *fx_base;
static struct paygate *fx_pg;
static char fx_dir[] = "/tmp/paygate-fuzz-XXXXXX";

static void fx_write(const char *name, const char *text)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof path, "%s/%s", fx_dir, name);
	FILE *f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
		fprintf(stderr, "fuzz fixture: cannot write %s\n", path);
		exit(2);
	}
}

static void fx_cleanup(void)
{
	static const char *const files[] = { "paygate.conf.lua", "apiv3", "secret", NULL };
	char path[PATH_MAX + 64];
	if (fx_pg)
		paygate_free(fx_pg);
	if (fx_base)
		event_base_free(fx_base);
	for (const char *const *f = files; *f; f++) {
		snprintf(path, sizeof path, "%s/%s", fx_dir, *f);
		remove(path);
	}
	remove(fx_dir);
}

/* The engine, made on first use (from the repository root, or PAYGATE_ROOT). */
static struct paygate *fx_engine(void)
{
	char root[PATH_MAX], conf[5 * PATH_MAX + 2048], err[1024];
	if (fx_pg)
		return fx_pg;
	const char *r = getenv("PAYGATE_ROOT");
	if (!realpath(r && r[0] ? r : ".", root) || !mkdtemp(fx_dir)) {
		fprintf(stderr, "fuzz fixture: no repository root or temporary directory\n");
		exit(2);
	}
	fx_write("apiv3", "0123456789abcdef0123456789abcdef");
	fx_write("secret", "fuzz-app-secret");
	snprintf(conf, sizeof conf,
	         "listen = \"127.0.0.1:0\"\n"
	         "database = \":memory:\"\n"
	         "scripts = \"%s/tests/fuzz/scripts\"\n"
	         "lualib = \"%s/lualib\"\n"
	         "log_level = \"error\"\n"
	         "script = { memory_mb = 32, max_instructions = 2000000 }\n"
	         "fetch = { timeout_ms = 200, connect_timeout_ms = 200 }\n"
	         "wechatpay = { mchid = \"1900000001\", appid = \"wx0000000000000001\",\n"
	         "  merchant_serial = \"5157F09EFDC096DE15EBE81A47057A7232F1B8E1\",\n"
	         "  private_key_file = \"%s/tests/vectors/tv1_merchant_key.pem\",\n"
	         "  apiv3_key_file = \"apiv3\", app_secret_file = \"secret\",\n"
	         "  platform_cert_files = { \"%s/tests/vectors/tv3_cert.pem\" },\n"
	         "  base_url = \"http://127.0.0.1:9\", login_base_url = \"http://127.0.0.1:9\", sandbox = true,\n"
	         "  notify_url = \"https://example.com/notify\", refund_notify_url = \"https://example.com/refund\",\n"
	         "  download_certificates = false }\n",
	         root, root, root, root);
	fx_write("paygate.conf.lua", conf);
	char conf_path[PATH_MAX + 64];
	snprintf(conf_path, sizeof conf_path, "%s/paygate.conf.lua", fx_dir);
	static FILE *devnull;
	devnull = fopen("/dev/null", "w");
	struct paygate_options o = { .config_path = conf_path, .no_watch = 1, .log_file = devnull };
	fx_base = event_base_new();
	fx_pg = fx_base ? paygate_new(fx_base, &o, err, sizeof err) : NULL;
	if (!fx_pg) {
		fprintf(stderr, "fuzz fixture: cannot start the engine: %s\n", fx_base ? err : "no event base");
		fx_cleanup();
		exit(2);
	}
	atexit(fx_cleanup);
	return fx_pg;
}

/* Run the loop until *done or ms pass; returns *done. */
static int fx_run_until(const int *done, int ms)
{
	for (int waited = 0; !*done && waited < ms; waited++) {
		struct timeval tv = { 0, 1000 };
		event_base_loopexit(fx_base, &tv);
		event_base_loop(fx_base, 0);
	}
	return *done;
}

#endif
