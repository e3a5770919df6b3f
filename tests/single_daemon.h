/* single_daemon.h — main() of the test gateways (paygate-crash, paygate-faults): the daemon as one process. */
#ifndef PAYGATE_TESTS_SINGLE_DAEMON_H
#define PAYGATE_TESTS_SINGLE_DAEMON_H

#include <stdlib.h>

#include "daemon.h"

/*
** daemon_main with --single added to the command line: no master, one
** process, so the signals a test sends (SIGUSR1, SIGUSR2) and the faults it
** injects reach the engine itself. configure installs the test's hooks
** before the engine starts. Returns the exit status.
*/
static int single_daemon_main(const char *name, int argc, char **argv, void (*configure)(struct paygate_options *o))
{
	char **args = calloc((size_t)argc + 2, sizeof *args);
	if (!args)
		return 1;
	for (int i = 0; i < argc; i++)
		args[i] = argv[i];
	args[argc] = "--single";
	int rc = daemon_main(name, argc + 1, args, configure);
	free(args);
	return rc;
}

#endif
