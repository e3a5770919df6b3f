/* script.h — loading a script generation: the jailed VM, the engine's modules, lualib and the scripts. */
#ifndef PAYGATE_SCRIPT_H
#define PAYGATE_SCRIPT_H

#include <stddef.h>

struct engine;
struct gen;

/*
** Build a new generation from the configured lualib and scripts directories:
** fresh jailed VM, engine modules, lualib's `paygate`, then scripts/init.lua.
** Migrations are not applied here (see reload). Returns NULL with the error
** (file:line where known) in err; nothing is left allocated.
*/
struct gen *script_load(struct engine *e, char *err, size_t errlen);

#endif
