/* routes.h — the engine's own routes, in front of the scripts': /healthz, /readyz, /metrics, /admin/reload. */
#ifndef PAYGATE_ROUTES_H
#define PAYGATE_ROUTES_H

#include "http.h"

/*
** The http_front_fn that paygate installs: answers the health route (anyone),
** the metrics and admin routes (a configured admin token from anywhere, else
** loopback peers only) and returns 1; any other path returns 0.
*/
int routes_front(struct http_req *h, const char *path, enum evhttp_cmd_type cmd);

/* This engine's /metrics text (without the other workers'), appended to b. */
void routes_metrics(struct engine *e, struct evbuffer *b);

#endif
