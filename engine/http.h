/* http.h — the inbound HTTP server: evhttp with explicit limits, each request a Lua coroutine. */
#ifndef PAYGATE_HTTP_H
#define PAYGATE_HTTP_H

#include <stddef.h>

#include <lua.h>

struct evhttp_request;

struct engine;

/* Create the evhttp server on e->base with the configured limits (not yet bound). */
int http_init(struct engine *e, char *err, size_t errlen);

/* Bind host:port (port 0 picks a free one, stored in e->port). */
int http_listen(struct engine *e, const char *host, int port, char *err, size_t errlen);

/*
** Serve a request received by another evhttp (the embedding host's): the
** same path as paygate's own server; the request is answered exactly once.
*/
void http_handle_request(struct engine *e, struct evhttp_request *req);

/* Stop accepting; requests in flight continue. */
void http_stop_accepting(struct engine *e);

void http_free(struct engine *e);

/* The evhttp request behind the request object at idx, or NULL if it is not one (or finished). */
struct evhttp_request *http_request_of(lua_State *L, int idx);

/* Register the request userdata's metatable in a generation. [-0, +0, e] */
void http_register_lua(lua_State *L);

#endif
