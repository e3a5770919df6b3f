/* crashvfs.h — a SQLite VFS that loses what was not synced: simulated power cuts for the durability tests. */
#ifndef PAYGATE_CRASHVFS_H
#define PAYGATE_CRASHVFS_H

#include <sqlite3.h>

/* The exit status of a process whose power was cut. */
#define CRASHVFS_EXIT 77

/*
** Register the crash VFS as the default, before any database is opened. With
** cut_at > 0 the databases and WALs opened through it keep their writes
** in memory until synced, and once the process gets SIGUSR2 the power is cut
** at the cut_at-th write or sync after it (chance, decided by seed, picks
** which unsynced writes survive). With 0 it only passes everything through.
** Either way, SIGUSR1 makes the next sync of a database or WAL fail.
** Returns 0, or -1 when SQLite has no default VFS to wrap.
*/
int crashvfs_register(long cut_at, unsigned long seed);

#endif
