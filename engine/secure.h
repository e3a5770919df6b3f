/* secure.h — secrets for scripts: random ids, signed expiring session tokens, digests, constant-time compare. */
#ifndef PAYGATE_SECURE_H
#define PAYGATE_SECURE_H

#include <stddef.h>

#include <lua.h>

struct engine;

/*
** Load the token secret: the file named by session_secret_file, else a
** 32-byte secret generated once and kept in the database (so sessions survive
** restarts). Returns -1 with err filled on failure.
*/
int secure_init(struct engine *e, char *err, size_t errlen);
void secure_free(struct engine *e);

/* Push the `secure` table: random_id, issue_token, verify_token, sha256_hex, equal. [-0, +1, e] */
void secure_push_lua(lua_State *L, struct engine *e);

#endif
