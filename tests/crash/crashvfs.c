/* crashvfs.c — a SQLite VFS that loses what was not synced: simulated power cuts for the durability tests. */
#include "crashvfs.h"

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
** Every write to the database or its WAL is kept in memory, as the OS page
** cache would keep it, and reaches the real file only at the file's next
** xSync: the real file is "the disk". Reads see the writes not yet synced,
** as they would through the page cache. At the armed moment (the Nth write
** or sync after the process got SIGUSR2, so that a test cuts under load, not
** at start-up), the power is cut: each write still pending reaches the disk or
** not, by chance, and one of them may be torn half-way; then the process ends
** with CRASHVFS_EXIT at once. Whatever was acknowledged must survive that.
**
** SIGUSR1 arms another fault: the next sync of a database or WAL fails
** (SQLITE_IOERR_FSYNC), as a failing disk's would; what it should have made
** durable stays pending.
**
** Simplifications, each of which makes the test no weaker for paygate's own
** code: a truncate reaches the disk at once; files are created at once;
** only main databases and WALs are buffered (the -shm index is rebuilt by
** SQLite's recovery after a crash, as after kill -9).
*/

struct pending {
	sqlite3_int64 off;
	int len;
	struct pending *next;
	unsigned char data[];
};

struct crash_file {
	sqlite3_file base;
	sqlite3_file *real; /* the unix VFS's file, placed right after this struct */
	int is_db;          /* a main database or a WAL: the files whose syncs count */
	int buffered;
	struct pending *head, *tail;
	struct crash_file *next_open; /* every buffered file, for the power cut */
};

static sqlite3_vfs *real_vfs;
static sqlite3_vfs crash_vfs;
static struct crash_file *open_files;
static long events, cut_at; /* the power goes at the cut_at-th write or sync after arming (0: never) */
static volatile sig_atomic_t armed, fail_next_sync;
static uint64_t rng = 88172645463325252ull;

static uint64_t next_random(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void drop_pending(struct crash_file *f)
{
	while (f->head) {
		struct pending *p = f->head;
		f->head = p->next;
		free(p);
	}
	f->tail = NULL;
}

/* The disk takes every pending write, in order. */
static int flush_pending(struct crash_file *f)
{
	for (struct pending *p = f->head; p; p = p->next) {
		int rc = p->len ? f->real->pMethods->xWrite(f->real, p->data, p->len, p->off) : SQLITE_OK;
		if (rc != SQLITE_OK)
			return rc;
	}
	drop_pending(f);
	return SQLITE_OK;
}

/* The power goes: some pending writes reach the disk, one may be torn, then nothing. */
static void power_cut(void)
{
	for (struct crash_file *f = open_files; f; f = f->next_open) {
		for (struct pending *p = f->head; p; p = p->next) {
			uint64_t r = next_random();
			if (r % 2 == 0 || p->len == 0)
				continue;
			int len = r % 7 == 1 ? (int)(next_random() % (uint64_t)p->len) : p->len; /* torn */
			f->real->pMethods->xWrite(f->real, p->data, len, p->off);
		}
	}
	_exit(CRASHVFS_EXIT);
}

/* ---- the file methods ---- */

static int c_close(sqlite3_file *file)
{
	struct crash_file *f = (struct crash_file *)file;
	if (f->buffered) {
		flush_pending(f); /* a clean close: SQLite synced what mattered before */
		for (struct crash_file **pp = &open_files; *pp; pp = &(*pp)->next_open) {
			if (*pp == f) {
				*pp = f->next_open;
				break;
			}
		}
	}
	return f->real->pMethods->xClose(f->real);
}

/* The size the file has through the page cache: the disk's, or the end of a pending write beyond it. */
static int logical_size(struct crash_file *f, sqlite3_int64 *size)
{
	int rc = f->real->pMethods->xFileSize(f->real, size);
	for (struct pending *p = f->head; rc == SQLITE_OK && p; p = p->next)
		if (p->off + p->len > *size)
			*size = p->off + p->len;
	return rc;
}

static int c_read(sqlite3_file *file, void *buf, int amt, sqlite3_int64 off)
{
	struct crash_file *f = (struct crash_file *)file;
	int rc = f->real->pMethods->xRead(f->real, buf, amt, off);
	if (!f->head || (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ))
		return rc;
	for (struct pending *p = f->head; p; p = p->next) {
		sqlite3_int64 from = p->off > off ? p->off : off;
		sqlite3_int64 to = p->off + p->len < off + amt ? p->off + p->len : off + amt;
		if (from < to)
			memcpy((unsigned char *)buf + (from - off), p->data + (from - p->off), (size_t)(to - from));
	}
	sqlite3_int64 size;
	if (logical_size(f, &size) != SQLITE_OK)
		return SQLITE_IOERR_READ;
	if (off + amt <= size)
		return SQLITE_OK;
	if (off < size)
		memset((unsigned char *)buf + (size - off), 0, (size_t)(off + amt - size));
	else
		memset(buf, 0, (size_t)amt);
	return SQLITE_IOERR_SHORT_READ;
}

static int c_write(sqlite3_file *file, const void *buf, int amt, sqlite3_int64 off)
{
	struct crash_file *f = (struct crash_file *)file;
	if (!f->buffered)
		return f->real->pMethods->xWrite(f->real, buf, amt, off);
	if (armed && ++events == cut_at)
		power_cut();
	struct pending *p = malloc(sizeof *p + (size_t)amt);
	if (!p)
		return SQLITE_IOERR_NOMEM;
	p->off = off;
	p->len = amt;
	p->next = NULL;
	memcpy(p->data, buf, (size_t)amt);
	if (f->tail)
		f->tail->next = p;
	else
		f->head = p;
	f->tail = p;
	return SQLITE_OK;
}

static int c_truncate(sqlite3_file *file, sqlite3_int64 size)
{
	struct crash_file *f = (struct crash_file *)file;
	for (struct pending *p = f->head; p; p = p->next) {
		if (p->off >= size)
			p->len = 0;
		else if (p->off + p->len > size)
			p->len = (int)(size - p->off);
	}
	return f->real->pMethods->xTruncate(f->real, size);
}

static int c_sync(sqlite3_file *file, int flags)
{
	struct crash_file *f = (struct crash_file *)file;
	if (f->is_db && fail_next_sync) {
		fail_next_sync = 0;
		return SQLITE_IOERR_FSYNC;
	}
	if (!f->buffered)
		return f->real->pMethods->xSync(f->real, flags);
	if (armed && ++events == cut_at)
		power_cut();
	return flush_pending(f); /* on "the disk" now; no real fsync needed for the simulation */
}

static int c_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
	return logical_size((struct crash_file *)file, size);
}

#define REAL(file) (((struct crash_file *)(file))->real)

static int c_lock(sqlite3_file *file, int lock)
{
	return REAL(file)->pMethods->xLock(REAL(file), lock);
}

static int c_unlock(sqlite3_file *file, int lock)
{
	return REAL(file)->pMethods->xUnlock(REAL(file), lock);
}

static int c_check_reserved(sqlite3_file *file, int *out)
{
	return REAL(file)->pMethods->xCheckReservedLock(REAL(file), out);
}

static int c_file_control(sqlite3_file *file, int op, void *arg)
{
	return REAL(file)->pMethods->xFileControl(REAL(file), op, arg);
}

static int c_sector_size(sqlite3_file *file)
{
	return REAL(file)->pMethods->xSectorSize(REAL(file));
}

static int c_device_characteristics(sqlite3_file *file)
{
	return REAL(file)->pMethods->xDeviceCharacteristics(REAL(file));
}

static int c_shm_map(sqlite3_file *file, int page, int size, int extend, void volatile **out)
{
	return REAL(file)->pMethods->xShmMap(REAL(file), page, size, extend, out);
}

static int c_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
	return REAL(file)->pMethods->xShmLock(REAL(file), offset, n, flags);
}

static void c_shm_barrier(sqlite3_file *file)
{
	REAL(file)->pMethods->xShmBarrier(REAL(file));
}

static int c_shm_unmap(sqlite3_file *file, int delete_flag)
{
	return REAL(file)->pMethods->xShmUnmap(REAL(file), delete_flag);
}

/*
** One lock for all of it: the engine's WAL checkpoints run on a thread of their own, with their own
** connection, and the pending writes, the list of open files and the event count are shared.
*/
static pthread_mutex_t vfs_mu = PTHREAD_MUTEX_INITIALIZER;

#define LOCKED(call)                           \
	do {                                   \
		pthread_mutex_lock(&vfs_mu);   \
		int rc_ = (call);              \
		pthread_mutex_unlock(&vfs_mu); \
		return rc_;                    \
	} while (0)

static int l_close(sqlite3_file *file)
{
	LOCKED(c_close(file));
}

static int l_read(sqlite3_file *file, void *buf, int amt, sqlite3_int64 off)
{
	LOCKED(c_read(file, buf, amt, off));
}

static int l_write(sqlite3_file *file, const void *buf, int amt, sqlite3_int64 off)
{
	LOCKED(c_write(file, buf, amt, off));
}

static int l_truncate(sqlite3_file *file, sqlite3_int64 size)
{
	LOCKED(c_truncate(file, size));
}

static int l_sync(sqlite3_file *file, int flags)
{
	LOCKED(c_sync(file, flags));
}

static int l_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
	LOCKED(c_file_size(file, size));
}

static const sqlite3_io_methods crash_io = {
	2, /* shared memory, no memory-mapped I/O (every read goes through l_read) */
	l_close,   l_read,     l_write,          l_truncate,     l_sync,        l_file_size,
	c_lock,    c_unlock,   c_check_reserved, c_file_control, c_sector_size, c_device_characteristics,
	c_shm_map, c_shm_lock, c_shm_barrier,    c_shm_unmap,    NULL,          NULL,
};

/* ---- the VFS: open wraps, everything else is the unix VFS's ---- */

static int c_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags)
{
	struct crash_file *f = (struct crash_file *)file;
	(void)vfs;
	memset(f, 0, sizeof *f);
	f->real = (sqlite3_file *)(f + 1);
	int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
	if (rc != SQLITE_OK)
		return rc;
	f->base.pMethods = &crash_io;
	f->is_db = (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)) != 0;
	f->buffered = cut_at && f->is_db;
	if (f->buffered) {
		pthread_mutex_lock(&vfs_mu);
		f->next_open = open_files;
		open_files = f;
		pthread_mutex_unlock(&vfs_mu);
	}
	return SQLITE_OK;
}

static int c_delete(sqlite3_vfs *vfs, const char *name, int dirsync)
{
	(void)vfs;
	return real_vfs->xDelete(real_vfs, name, dirsync);
}

static int c_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
	(void)vfs;
	return real_vfs->xAccess(real_vfs, name, flags, out);
}

static int c_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
	(void)vfs;
	return real_vfs->xFullPathname(real_vfs, name, n, out);
}

static int c_randomness(sqlite3_vfs *vfs, int n, char *out)
{
	(void)vfs;
	return real_vfs->xRandomness(real_vfs, n, out);
}

static int c_sleep(sqlite3_vfs *vfs, int us)
{
	(void)vfs;
	return real_vfs->xSleep(real_vfs, us);
}

static int c_current_time(sqlite3_vfs *vfs, double *out)
{
	(void)vfs;
	return real_vfs->xCurrentTime(real_vfs, out);
}

static int c_last_error(sqlite3_vfs *vfs, int n, char *out)
{
	(void)vfs;
	return real_vfs->xGetLastError(real_vfs, n, out);
}

static int c_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
	(void)vfs;
	return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

static void on_arm(int sig)
{
	if (sig == SIGUSR1)
		fail_next_sync = 1;
	else
		armed = 1;
}

int crashvfs_register(long cut_at_event, unsigned long seed)
{
	if (cut_at_event > 0)
		signal(SIGUSR2, on_arm);
	signal(SIGUSR1, on_arm);
	if (!(real_vfs = sqlite3_vfs_find(NULL)))
		return -1;
	cut_at = cut_at_event;
	rng ^= (uint64_t)seed * 0x9E3779B97F4A7C15ull;
	crash_vfs = (sqlite3_vfs){
		.iVersion = 2,
		.szOsFile = (int)sizeof(struct crash_file) + real_vfs->szOsFile,
		.mxPathname = real_vfs->mxPathname,
		.zName = "crash",
		.xOpen = c_open,
		.xDelete = c_delete,
		.xAccess = c_access,
		.xFullPathname = c_full_pathname,
		.xRandomness = c_randomness,
		.xSleep = c_sleep,
		.xCurrentTime = c_current_time,
		.xGetLastError = c_last_error,
		.xCurrentTimeInt64 = c_current_time64,
	};
	return sqlite3_vfs_register(&crash_vfs, 1) == SQLITE_OK ? 0 : -1;
}
