/* jobs.h — durable jobs: a SQLite table and a scheduler that runs due jobs as coroutines. */
#ifndef PAYGATE_JOBS_H
#define PAYGATE_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

struct engine;
struct jobs;

/*
** Create the jobs table if needed and put jobs left "running" by a crash
** back in the queue (a job runs at least once; handlers must be idempotent).
** Returns NULL with err filled on failure.
*/
struct jobs *jobs_new(struct engine *e, char *err, size_t errlen);
void jobs_free(struct jobs *j);

/* Look for due jobs now and re-arm the timer for the next one. */
void jobs_kick(struct jobs *j);

int jobs_running(const struct jobs *j);

/*
** Push the `jobs` table (schedule, cancel). Expects the `json` table at the
** top of the stack and consumes it. [-1, +1, e]
*/
void jobs_push_lua(lua_State *L, struct engine *e);

#endif
