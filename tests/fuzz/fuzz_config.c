/* fuzz_config.c — libFuzzer target: the config reader on arbitrary file contents. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "replay.h"

/*
** The input is written as a config file and loaded over the defaults: the
** reader returns 0, or -1 with a message, and the config is freed either way
** (ASan sees a leak or a double free). A file that loops or grows without end
** is stopped by the reader's own bounds, so it ends too.
*/

static char path[] = "/tmp/paygate-fuzz-config-XXXXXX";
static int fd = -1;

static void cleanup(void)
{
	unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config cfg;
	char err[1024] = "";
	if (fd < 0) {
		fd = mkstemp(path);
		if (fd < 0)
			abort();
		atexit(cleanup);
	}
	if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	if (config_defaults(&cfg) < 0)
		abort();
	int rc = config_load(&cfg, path, err, sizeof err);
	if (rc != 0 && (rc != -1 || err[0] == '\0')) {
		fprintf(stderr, "fuzz_config: config_load returned %d with message \"%s\"\n", rc, err);
		abort();
	}
	config_free(&cfg);
	return 0;
}
