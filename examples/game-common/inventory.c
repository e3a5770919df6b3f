/* inventory.c — the game examples' state: what each player holds, and the host.deliver that fills it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inventory.h"

int parse_id(const char *s, long *out)
{
	char *end;
	errno = 0;
	long v = s ? strtol(s, &end, 10) : 0;
	if (!s || errno || end == s || *end || v < 1 || v >= 2147483648L)
		return -1;
	*out = v;
	return 0;
}

/* The player's stack of item, created empty at the first delivery; NULL when out of memory. */
static struct stack *stack_of(struct inventory *inv, long player, long item)
{
	struct stack *s;
	for (s = inv->stacks; s; s = s->next)
		if (s->player == player && s->item == item)
			return s;
	if (!(s = calloc(1, sizeof *s)))
		return NULL;
	s->player = player;
	s->item = item;
	s->next = inv->stacks;
	inv->stacks = s;
	return s;
}

static int was_delivered(const struct inventory *inv, const char *order_no)
{
	for (const struct delivered *d = inv->delivered; d; d = d->next)
		if (strcmp(d->order_no, order_no) == 0)
			return 1;
	return 0;
}

int inventory_deliver(void *arg, const char *json, struct evbuffer *reply)
{
	struct inventory *inv = arg;
	char order_no[64], player[24], item[24], qty[24];
	long p, i, q = 1;
	struct stack *s;
	struct delivered *d;

	if (paygate_json_get(json, "order_no", order_no, sizeof order_no) < 0 ||
	    paygate_json_get(json, "player", player, sizeof player) < 0 || parse_id(player, &p) < 0 ||
	    paygate_json_get(json, "item", item, sizeof item) < 0 || parse_id(item, &i) < 0 ||
	    (paygate_json_get(json, "qty", qty, sizeof qty) >= 0 && parse_id(qty, &q) < 0)) {
		paygate_json_add_string(reply, "deliver needs order_no, player, item (and qty)");
		return -1;
	}
	if (was_delivered(inv, order_no)) {
		paygate_json_add_string(reply, "duplicate"); /* any JSON: scripts/delivery.lua ignores it */
		return 0;
	}
	if (!(s = stack_of(inv, p, i)) || !(d = calloc(1, sizeof *d))) {
		paygate_json_add_string(reply, "the game is out of memory");
		return -1; /* the job runs again later */
	}
	s->count += q;
	snprintf(d->order_no, sizeof d->order_no, "%s", order_no);
	d->next = inv->delivered;
	inv->delivered = d;
	printf("game: delivered item %ld x%ld to player %ld (order %s)\n", i, q, p, order_no);
	fflush(stdout);
	return 0; /* nothing in reply: the script sees nil */
}

char *inventory_json(const struct inventory *inv, long player)
{
	enum { ENTRY = 48 }; /* ,"<item>":<count> with a long each, and room to spare */
	size_t n = 0, len = 0;
	for (const struct stack *s = inv->stacks; s; s = s->next)
		n += s->player == player;
	char *json = malloc(n * ENTRY + 3);
	if (!json)
		return NULL;
	json[len++] = '{';
	for (const struct stack *s = inv->stacks; s; s = s->next) {
		if (s->player != player)
			continue;
		len += (size_t)snprintf(json + len, ENTRY, "%s\"%ld\":%ld", len > 1 ? "," : "", s->item, s->count);
	}
	json[len++] = '}';
	json[len] = '\0';
	return json;
}

void inventory_free(struct inventory *inv)
{
	while (inv->stacks) {
		struct stack *s = inv->stacks;
		inv->stacks = s->next;
		free(s);
	}
	while (inv->delivered) {
		struct delivered *d = inv->delivered;
		inv->delivered = d->next;
		free(d);
	}
}
