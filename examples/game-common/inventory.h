/* inventory.h — the game examples' state: what each player holds, and the host.deliver that fills it. */
#ifndef GAME_INVENTORY_H
#define GAME_INVENTORY_H

#include <paygate.h>

/*
** Shared by examples/game-server (libevent), examples/epoll-game (epoll) and
** examples/uv-game (libuv): the game's own state is the same whatever loop
** runs it. It needs only the C library and paygate.h (its JSON helpers, and
** the reply buffer of a host function, which it fills through them).
**
** Not locked: use it from one thread only. Every embedding mode runs
** host.deliver on the game's thread, the one that answers INV too (libevent
** host: the game's own loop; own thread: inside paygate_dispatch_completions;
** driven: inside paygate_run_once).
*/

/* What one player holds of one item. */
struct stack {
	long player, item, count;
	struct stack *next;
};

/* An order already delivered: host.deliver is at-least-once, so the game remembers what it delivered. */
struct delivered {
	char order_no[64];
	struct delivered *next;
};

/* The game's state: start it zeroed (struct inventory inv = { 0 }), end it with inventory_free. */
struct inventory {
	struct stack *stacks;        /* newest first */
	struct delivered *delivered; /* newest first */
};

/* A player or item id (or a quantity): a whole decimal number in [1, 2^31). 0 on success, -1 otherwise. */
int parse_id(const char *s, long *out);

/*
** host.deliver{order_no, player, item, qty} — register it with the inventory
** as arg: { "deliver", inventory_deliver, &inv }. scripts/delivery.lua calls it
** once a payment is confirmed (qty defaults to 1). Idempotent by order_no: a
** second call for the same order adds nothing and replies "duplicate". Returns
** -1 (the script raises, the fulfillment job retries later) on bad arguments
** or when memory runs out. Prints "game: delivered item I xQ to player P
** (order O)" on stdout.
*/
int inventory_deliver(void *arg, const char *json, struct evbuffer *reply);

/* What a player holds as a JSON object, {"<item>": count, ...} ("{}" for nothing): malloc'd, NULL when out of memory. */
char *inventory_json(const struct inventory *inv, long player);

/* Free every stack and every delivered order; inv is empty again. */
void inventory_free(struct inventory *inv);

#endif
