/* paygate.h — the public API: run the paygate engine on your own libevent loop. */
#ifndef PAYGATE_H
#define PAYGATE_H

#include <stddef.h>

#include <event2/event.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PAYGATE_VERSION "0.1.0"

/** An engine: one script generation at a time, its database, jobs and HTTP server. */
struct paygate;

/**
 * Create an engine on the host's event loop.
 *
 * @param base the event_base that will run everything; paygate starts no
 *        threads and installs no signal handlers.
 * @param config_path a config file (see README), or NULL for the defaults.
 * @param err, errlen receive a message when NULL is returned.
 * @return the engine with its first script generation loaded and migrated,
 *         or NULL (nothing is left allocated).
 */
struct paygate *paygate_new(struct event_base *base, const char *config_path, char *err, size_t errlen);

/**
 * Same as paygate_new with the database and listen address overridden
 * (either may be NULL) and without applying anything to a real database
 * when `check_only` is set: scripts are loaded and migrated on an in-memory
 * database, which is what `paygate --check` does.
 */
struct paygate *paygate_new_ex(struct event_base *base, const char *config_path, const char *listen,
                               int check_only, char *err, size_t errlen);

/**
 * Start serving HTTP on the configured address.
 * @return 0, or -1 with err filled (address in use, ...).
 */
int paygate_listen(struct paygate *pg, char *err, size_t errlen);

/** The host it listens on, as configured. */
const char *paygate_host(const struct paygate *pg);

/** The port actually bound (useful with port 0), or 0 before paygate_listen. */
int paygate_port(const struct paygate *pg);

/**
 * Load the scripts again now. On failure the running generation keeps
 * serving and err says why.
 * @return the new generation id, or -1.
 */
long long paygate_reload(struct paygate *pg, char *err, size_t errlen);

/**
 * Stop accepting connections and let requests in flight finish, for at most
 * grace_ms; then `done(arg)` is called from the event loop. Free the engine
 * afterwards with paygate_free.
 */
void paygate_shutdown(struct paygate *pg, int grace_ms, void (*done)(void *arg), void *arg);

/** Free everything: work still in flight is cancelled (jobs run again at next start). */
void paygate_free(struct paygate *pg);

#ifdef __cplusplus
}
#endif

#endif
