/* http.h — the inbound HTTP server: evhttp with explicit limits, each request a Lua coroutine. */
#ifndef PAYGATE_HTTP_H
#define PAYGATE_HTTP_H

#include <stddef.h>

#include <event2/http.h>
#include <lua.h>

struct engine;

/* One inbound request being answered (owned by http.c until its answer is sent). */
struct http_req;

/*
** The routes tried before the scripts' (routes.c installs the health,
** metrics and admin routes): answer h with http_answer or
** http_answer_error and return 1, or return 0 to pass it to the scripts.
*/
typedef int (*http_front_fn)(struct http_req *h, const char *path, enum evhttp_cmd_type cmd);

/* Create the evhttp server on e->base with the configured limits (not yet bound); front may be NULL. */
int http_init(struct engine *e, http_front_fn front, char *err, size_t errlen);

/* Bind host:port (port 0 picks a free one, stored in e->port). */
int http_listen(struct engine *e, const char *host, int port, char *err, size_t errlen);
/* Serve on a socket already listening (shared by the workers; closed when the engine stops accepting). */
int http_accept_on(struct engine *e, int fd, char *err, size_t errlen);

/*
** Serve a request received by another evhttp (the embedding host's): the
** same path as paygate's own server; the request is answered exactly once.
*/
void http_handle_request(struct engine *e, struct evhttp_request *req);

/* Stop accepting; requests in flight continue. */
void http_stop_accepting(struct engine *e);

void http_free(struct engine *e);

/* Answer h (taking ownership of body, which may be NULL) and free it: h is gone afterwards. */
void http_answer(struct http_req *h, int status, const char *ctype, struct evbuffer *body);

/* Answer h with the JSON error shape {"error": code, "message": message}; h is gone afterwards. */
void http_answer_error(struct http_req *h, int status, const char *code, const char *message);

struct engine *http_engine(const struct http_req *h);
struct evhttp_request *http_evreq(const struct http_req *h);

/* Record who the admin routes let in (a token's name, "loopback"): scripts read it as req.admin. */
void http_set_admin(struct http_req *h, const char *who);

/* The evhttp request behind the request object at idx, or NULL if it is not one (or finished). */
struct evhttp_request *http_request_of(lua_State *L, int idx);

/* Register the request userdata's metatable in a generation. [-0, +0, e] */
void http_register_lua(lua_State *L);

#endif
