/* reload.h — hot reload: build a generation aside, migrate, swap; triggered by file changes, SIGHUP or admin. */
#ifndef PAYGATE_RELOAD_H
#define PAYGATE_RELOAD_H

#include <stddef.h>

struct engine;

/*
** Load a new generation and apply its migrations; on success make it
** current (the old one drains and is freed by its last user). On failure the
** running generation keeps serving, the error is logged, kept for /healthz,
** and returned in err. `trigger` names the cause for the log.
*/
int reload_run(struct engine *e, const char *trigger, char *err, size_t errlen);

/* Watch the scripts and lualib directories (inotify); changes reload after a quiet period. */
int reload_watch_start(struct engine *e, char *err, size_t errlen);
void reload_watch_stop(struct engine *e);

#endif
