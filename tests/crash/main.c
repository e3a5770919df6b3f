/* main.c — paygate-crash: the paygate daemon on a VFS whose power can be cut (durability tests only). */
#include <stdio.h>
#include <stdlib.h>

#include "crashvfs.h"
#include "../single_daemon.h"

/*
** PAYGATE_CRASH_AT=N cuts the power at the Nth write or sync of the
** process's databases after it gets SIGUSR2 (PAYGATE_CRASH_SEED picks which unsynced
** writes survive); unset, the daemon runs as usual.
*/
static void arm_crash_vfs(struct paygate_options *o)
{
	const char *at = getenv("PAYGATE_CRASH_AT"), *seed = getenv("PAYGATE_CRASH_SEED");
	(void)o;
	if (crashvfs_register(at ? strtol(at, NULL, 10) : 0, seed ? strtoul(seed, NULL, 10) : 0) < 0) {
		fprintf(stderr, "paygate-crash: cannot register the crash VFS\n");
		exit(1);
	}
}

/* One process (--single): the test's signals (SIGUSR1, SIGUSR2) and its power cut concern the engine itself. */
int main(int argc, char **argv)
{
	return single_daemon_main("paygate-crash", argc, argv, arm_crash_vfs);
}
