/* fetch.h — outbound HTTP(S): libcurl multi_socket on the engine's event loop; `http.request` yields. */
#ifndef PAYGATE_FETCH_H
#define PAYGATE_FETCH_H

#include <lua.h>

struct engine;
struct fetch;

struct fetch *fetch_new(struct engine *e);
/* Abort every transfer still running (their coroutines must already be gone) and free. */
void fetch_free(struct fetch *f);
int fetch_inflight(const struct fetch *f);

/*
** The `http` table: http.request{method=, url=, headers={}, body=,
** timeout_ms=, connect_timeout_ms=} suspends only the calling coroutine and
** returns {status=, headers={lowercase name = value}, body=} or nil, "kind:
** message" (kind = timeout, connect, tls, network, too_large, storage, error);
** a failure is logged (error level for a refused certificate) and counted in
** paygate_upstream_failures_total{reason=kind}. TLS: version 1.2 at least
** (fetch.tls_min_version), certificate and host name always verified against
** the system CAs or only fetch.ca_file; redirects are not followed.
** Connections are kept per engine: TLS sessions and DNS answers shared, HTTP/2
** streams preferred (a transfer waits to share a connection being opened), at
** most fetch.max_host_connections per host. [-0, +1, e]
*/
void fetch_push_lua(lua_State *L, struct engine *e);

#endif
