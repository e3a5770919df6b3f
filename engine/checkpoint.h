/* checkpoint.h — WAL checkpoints on a thread of their own, so the loop never copies pages or syncs the database. */
#ifndef PAYGATE_CHECKPOINT_H
#define PAYGATE_CHECKPOINT_H

#include <stddef.h>

/*
** In WAL mode every commit appends to the -wal file, and a checkpoint copies
** the WAL's pages back into the database file and syncs it. SQLite does that
** inside the COMMIT that crosses its threshold, which would stall the event
** loop for as long as the copy and the sync take. The checkpointer does it on
** its own thread with its own connection (PASSIVE: it never waits for, nor
** blocks, readers and writers); the loop only pokes it after a commit that
** left the WAL long. A checkpoint that does not finish (a reader still needs
** old pages) is simply done again at the next poke.
*/
struct checkpointer;

/* Open a second connection to the database at path and start the thread: NULL with err on failure. */
struct checkpointer *checkpointer_start(const char *path, char *err, size_t errlen);

/* A checkpoint is due: the thread runs one soon. Never blocks (beyond a mutex held for a moment). */
void checkpointer_poke(struct checkpointer *c);

/* How many checkpoints ran, and how many of them failed (for /metrics; read from the loop). */
void checkpointer_counts(struct checkpointer *c, unsigned long *ran, unsigned long *failed);

/* Let a running checkpoint finish, stop the thread, close its connection. Takes NULL. */
void checkpointer_stop(struct checkpointer *c);

#endif
