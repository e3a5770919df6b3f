/* daemon.h — the paygate daemon: options, signals, the event loop (main.c and the sandbox's main run it). */
#ifndef PAYGATE_DAEMON_H
#define PAYGATE_DAEMON_H

#include "paygate.h"

/*
** Run a daemon called `name` (for messages and --version): parse
** --config/--listen/--check, let configure() add to the options (the
** sandbox adds its Lua module; NULL for none), create the engine, listen,
** serve until SIGINT/SIGTERM (SIGHUP reloads). Returns the exit status.
*/
int daemon_main(const char *name, int argc, char **argv, void (*configure)(struct paygate_options *o));

#endif
