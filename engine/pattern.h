/* pattern.h — Lua string patterns (find, match, gmatch, gsub) whose every step is counted against a budget. */
#ifndef PAYGATE_PATTERN_H
#define PAYGATE_PATTERN_H

#include <stdint.h>

#include <lua.h>

/* Steps counted before the charge function is called with them. */
#define PATTERN_CHARGE_EVERY 1024

/*
** Called with the steps done since the last call (at most every
** PATTERN_CHARGE_EVERY steps, and once when a call ends); it raises a Lua
** error to stop the match.
*/

/*
** Set find, match, gmatch and gsub in the table at the top of the stack to
** this file's matcher: the semantics of Lua 5.4's, except that every step of
** the backtracking (and a plain find, in linear time) is charged. [-0, +0, e]
*/
void pattern_set_functions(lua_State *L, void (*charge)(lua_State *L, int64_t steps));

#endif
