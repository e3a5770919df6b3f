/* board.c — the workers' shared board: heartbeats, what each runs, and their metrics, in shared memory. */
#include "board.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <event2/buffer.h>

int board_new(struct board *b, int n)
{
	void *p = mmap(NULL, (size_t)n * sizeof *b->slots, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	b->count = n;
	b->slots = p; /* zero-filled: no process, nothing published */
	return 0;
}

void board_free(struct board *b)
{
	if (b->slots)
		munmap(b->slots, (size_t)b->count * sizeof *b->slots);
	b->slots = NULL;
}

void board_publish_metrics(struct board *b, int i, const char *text, size_t len)
{
	struct board_slot *s = &b->slots[i];
	if (len > BOARD_METRICS_BYTES) { /* keep whole lines */
		len = BOARD_METRICS_BYTES;
		while (len > 0 && text[len - 1] != '\n')
			len--;
	}
	__atomic_add_fetch(&s->metrics_seq, 1, __ATOMIC_ACQ_REL); /* odd: writing */
	memcpy(s->metrics, text, len);
	s->metrics_len = (uint32_t)len;
	__atomic_add_fetch(&s->metrics_seq, 1, __ATOMIC_RELEASE);
}

/* A consistent copy of slot s's text (malloc'd, *len bytes), or NULL when it kept changing or is empty. */
static char *copy_metrics(struct board_slot *s, size_t *len)
{
	char *buf = malloc(BOARD_METRICS_BYTES);
	if (!buf)
		return NULL;
	for (int tries = 0; tries < 8; tries++) {
		uint64_t seq = __atomic_load_n(&s->metrics_seq, __ATOMIC_ACQUIRE);
		if (seq & 1)
			continue;
		size_t n = s->metrics_len;
		memcpy(buf, s->metrics, n <= BOARD_METRICS_BYTES ? n : 0);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&s->metrics_seq, __ATOMIC_ACQUIRE) == seq && n > 0 && n <= BOARD_METRICS_BYTES) {
			*len = n;
			return buf;
		}
	}
	free(buf);
	return NULL;
}

/* ---- merging the workers' texts ---- */

/* One metric: its # HELP and # TYPE lines (from the first text that had them) and every worker's samples. */
struct family {
	char *name;
	char *help, *type;
	struct evbuffer *samples;
	struct family *next;
};

struct merge {
	struct family *head, **tail;
	struct family *current; /* the family of the lines being read (a histogram's _bucket, _sum, _count) */
};

static struct family *family_of(struct merge *m, const char *name, size_t n)
{
	struct family *f;
	for (f = m->head; f; f = f->next)
		if (strlen(f->name) == n && memcmp(f->name, name, n) == 0)
			return f;
	if (!(f = calloc(1, sizeof *f)) || !(f->name = strndup(name, n)) || !(f->samples = evbuffer_new())) {
		if (f)
			free(f->name);
		free(f);
		return NULL;
	}
	*m->tail = f;
	m->tail = &f->next;
	return f;
}

/* Does the sample name[0..n) belong to family f (f itself, or f_bucket, f_sum, f_count)? */
static int belongs(const struct family *f, const char *name, size_t n)
{
	size_t fl = strlen(f->name);
	if (n < fl || memcmp(name, f->name, fl) != 0)
		return 0;
	return n == fl || (n - fl == 7 && memcmp(name + fl, "_bucket", 7) == 0) ||
	       (n - fl == 4 && memcmp(name + fl, "_sum", 4) == 0) ||
	       (n - fl == 6 && memcmp(name + fl, "_count", 6) == 0);
}

/* One line of worker w's text (without its newline). */
static void merge_line(struct merge *m, int w, const char *line, size_t len)
{
	if (len == 0)
		return;
	if (line[0] == '#') {
		int help = len > 7 && memcmp(line, "# HELP ", 7) == 0,
		    type = len > 7 && memcmp(line, "# TYPE ", 7) == 0;
		if (!help && !type)
			return;
		const char *name = line + 7, *end = memchr(name, ' ', len - 7);
		size_t n = end ? (size_t)(end - name) : len - 7;
		struct family *f = family_of(m, name, n);
		if (!f)
			return;
		m->current = f;
		char **slot = help ? &f->help : &f->type;
		if (!*slot)
			*slot = strndup(line, len);
		return;
	}
	size_t n = strcspn(line, "{ ");
	if (n > len)
		n = len;
	struct family *f = m->current && belongs(m->current, line, n) ? m->current : family_of(m, line, n);
	if (!f)
		return;
	m->current = f;
	const char *open = n < len && line[n] == '{' ? line + n : NULL;
	const char *close = open ? memrchr(open, '}', len - n) : NULL;
	if (open && close) { /* name{a="x",worker="w"} value */
		evbuffer_add(f->samples, line, (size_t)(close - line));
		evbuffer_add_printf(f->samples, "%sworker=\"%d\"", close > open + 1 ? "," : "", w);
		evbuffer_add(f->samples, close, len - (size_t)(close - line));
	} else { /* name{worker="w"} value */
		evbuffer_add(f->samples, line, n);
		evbuffer_add_printf(f->samples, "{worker=\"%d\"}", w);
		evbuffer_add(f->samples, line + n, len - n);
	}
	evbuffer_add(f->samples, "\n", 1);
}

static void merge_text(struct merge *m, int w, const char *text, size_t len)
{
	m->current = NULL;
	while (len > 0) {
		const char *nl = memchr(text, '\n', len);
		size_t n = nl ? (size_t)(nl - text) : len;
		merge_line(m, w, text, n);
		text += n + (nl ? 1 : 0);
		len -= n + (nl ? 1 : 0);
	}
}

void board_merge_metrics(struct board *b, int self, struct evbuffer *text)
{
	struct merge m = { .head = NULL, .tail = &m.head };
	size_t own_len = evbuffer_get_length(text);
	char *own = malloc(own_len + 1);
	if (!own)
		return; /* out of memory: answer with this worker's figures alone */
	evbuffer_remove(text, own, own_len);
	for (int i = 0; i < b->count; i++) {
		size_t len;
		char *other;
		if (i == self) {
			merge_text(&m, i, own, own_len);
		} else if (b->slots[i].pid && b->slots[i].ready && (other = copy_metrics(&b->slots[i], &len))) {
			merge_text(&m, i, other, len);
			free(other);
		}
	}
	free(own);
	for (struct family *f = m.head, *next; f; f = next) {
		next = f->next;
		if (f->help)
			evbuffer_add_printf(text, "%s\n", f->help);
		if (f->type)
			evbuffer_add_printf(text, "%s\n", f->type);
		evbuffer_add_buffer(text, f->samples);
		evbuffer_free(f->samples);
		free(f->help);
		free(f->type);
		free(f->name);
		free(f);
	}
}

void board_health(struct board *b, int self, int64_t now_ms, struct evbuffer *json)
{
	int ready = 0;
	for (int i = 0; i < b->count; i++)
		ready += b->slots[i].pid && b->slots[i].ready;
	evbuffer_add_printf(json, ",\"worker\":%d,\"workers\":{\"count\":%d,\"ready\":%d,\"list\":[", self, b->count,
	                    ready);
	for (int i = 0; i < b->count; i++) {
		const struct board_slot *s = &b->slots[i];
		evbuffer_add_printf(json,
		                    "%s{\"index\":%d,\"pid\":%d,\"ready\":%s,\"generation\":%lld,\"beat_age_ms\":%lld,"
		                    "\"restarts\":%d}",
		                    i ? "," : "", i, (int)s->pid, s->pid && s->ready ? "true" : "false",
		                    (long long)s->generation, s->beat_ms ? (long long)(now_ms - s->beat_ms) : -1LL,
		                    s->restarts);
	}
	evbuffer_add_printf(json, "]}");
}
