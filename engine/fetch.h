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
** message" (kind = timeout, connect, tls, too_large, error). TLS
** verification is always on; redirects are not followed. [-0, +1, e]
*/
void fetch_push_lua(lua_State *L, struct engine *e);

#endif
