/* admin.h — who may call the admin routes: named tokens, loopback trust, the console's session cookie and files. */
#ifndef PAYGATE_ADMIN_H
#define PAYGATE_ADMIN_H

#include "http.h"

struct engine;

/*
** The admin front, tried for every request before the scripts' routes:
** - /admin/ and /admin/console/<file>: the web console's files (anyone: they hold no data);
** - POST /admin/login {token}, POST /admin/logout, GET /admin/session: the console's session;
** - POST /admin/backup (let in as below): VACUUM INTO <database>-backup-<UTC time>.db;
** - any other /admin/ path and /metrics: let in a caller with a configured token (Bearer), a
**   valid session cookie (plus X-CSRF-Token on writes), or a loopback peer when
**   admin.trust_loopback is set (for /metrics also when no token is configured at all).
**   Writes that a browser sent from another origin are refused whatever else holds.
** Returns 1 when it answered h (a file, a session answer, a refusal), 0 when h may go on
** (with http_set_admin(h, who) done for admin paths).
*/
int admin_front(struct http_req *h, const char *path, enum evhttp_cmd_type cmd);

/* Is admin reachable without a token (trust_loopback)? For the start-up's warning. */
int admin_open_without_token(const struct engine *e);

#endif
