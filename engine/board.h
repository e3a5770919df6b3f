/* board.h — the workers' shared board: heartbeats, what each runs, and their metrics, in shared memory. */
#ifndef PAYGATE_BOARD_H
#define PAYGATE_BOARD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct evbuffer;

#define BOARD_RUNNING_BYTES 160
#define BOARD_METRICS_BYTES (1u << 20) /* one worker's /metrics text; longer is cut at a line */

/*
** One slot per worker index. The master writes pid, incarnation, restarts
** and started_ms; the worker writes the rest. Readers in other processes
** see each field whole (aligned 64-bit stores) but not the slot as one:
** the metrics text alone is guarded by a sequence number.
*/
struct board_slot {
	volatile pid_t pid; /* 0: no process now */
	volatile int ready; /* serving */
	volatile int incarnation;
	volatile int restarts;
	volatile int64_t started_ms;
	volatile int64_t beat_ms;          /* the worker's loop turned at this time */
	volatile int64_t generation;       /* its script generation */
	char running[BOARD_RUNNING_BYTES]; /* what its loop runs now (struct paygate_worker.running) */
	volatile uint64_t metrics_seq;     /* odd while the text is being written */
	volatile uint32_t metrics_len;
	char metrics[BOARD_METRICS_BYTES];
};

struct board {
	int count;
	struct board_slot *slots; /* count of them, shared with every process forked after board_new */
};

/* Map a board of n slots shared with children forked later: 0, or -1 (errno set). */
int board_new(struct board *b, int n);
void board_free(struct board *b);

/* The worker at index i publishes its rendered /metrics text (a copy others read without locks). */
void board_publish_metrics(struct board *b, int i, const char *text, size_t len);

/*
** Replace `text` (worker self's metrics, fresh) by the gateway's: every
** live worker's series, each with a label worker="<index>", grouped per
** metric with its # HELP and # TYPE once. Other workers' figures are their
** last published ones (at most a heartbeat old).
*/
void board_merge_metrics(struct board *b, int self, struct evbuffer *text);

/* Append ,"worker":self,"workers":{...} (each worker's pid, readiness, heartbeat age, restarts) to JSON. */
void board_health(struct board *b, int self, int64_t now_ms, struct evbuffer *json);

#endif
