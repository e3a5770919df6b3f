/* main.c — paygate-faults: the paygate daemon whose Nth SQLite write, read, commit or allocation fails (fault-injection tests only). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "../single_daemon.h"

/*
** On SIGUSR2 the process reads PAYGATE_FAULT_FILE, which says "KIND N" (or
** "none"), and arms one fault: counting from then, the Nth event of KIND
** fails, once:
**
**   write   the Nth write to a database, WAL or journal file: SQLITE_IOERR_WRITE
**   read    the Nth read of one of them: SQLITE_IOERR_READ
**   commit  the Nth sync of a WAL file, i.e. the Nth COMMIT: SQLITE_IOERR_FSYNC
**   malloc  the Nth allocation SQLite asks for: NULL (SQLITE_NOMEM)
**
** When it fires it writes "paygate-faults: injected KIND N" to stderr; armed
** again before it fired, it writes "paygate-faults: counted KIND M", the
** events there were. The rest of the time the daemon runs as usual
** (tests/e2e/faults.test.mjs).
*/

enum fault_kind { FAULT_NONE, FAULT_WRITE, FAULT_READ, FAULT_COMMIT, FAULT_MALLOC };

static volatile sig_atomic_t fault_kind;
static volatile long fault_left; /* events to let pass before the one that fails */
static long fault_n;

static void fired(void)
{
	static const char *const names[] = { "none", "write", "read", "commit", "malloc" };
	char line[96];
	int n = snprintf(line, sizeof line, "paygate-faults: injected %s %ld\n", names[fault_kind], fault_n);
	fault_kind = FAULT_NONE;
	if (write(2, line, (size_t)n) < 0) {
		/* nothing to do: stderr is gone */
	}
}

/* Count an event of kind k; 1 when this is the one that fails. */
static int hit(enum fault_kind k)
{
	if (fault_kind != (sig_atomic_t)k)
		return 0;
	if (--fault_left > 0)
		return 0;
	fired();
	return 1;
}

/* "paygate-faults: counted KIND M" (from the signal handler: no stdio) */
static void counted(long m)
{
	static const char *const names[] = { "none", "write", "read", "commit", "malloc" };
	char line[96] = "paygate-faults: counted ", digits[24];
	size_t len = strlen(line), nd = 0;
	const char *name = names[fault_kind];
	memcpy(line + len, name, strlen(name));
	len += strlen(name);
	line[len++] = ' ';
	do {
		digits[nd++] = (char)('0' + m % 10);
		m /= 10;
	} while (m > 0 && nd < sizeof digits);
	while (nd > 0)
		line[len++] = digits[--nd];
	line[len++] = '\n';
	if (write(2, line, len) < 0) {
		/* stderr is gone */
	}
}

/* ---- SIGUSR2: read the file, arm ---- */

static void on_arm(int sig)
{
	const char *path = getenv("PAYGATE_FAULT_FILE");
	char buf[64] = "";
	(void)sig;
	int saved = errno;
	int fd = path ? open(path, O_RDONLY) : -1;
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = '\0';
	enum fault_kind k = FAULT_NONE;
	const char *p = buf;
	static const struct {
		const char *name;
		enum fault_kind kind;
	} kinds[] = { { "write ", FAULT_WRITE },
		      { "read ", FAULT_READ },
		      { "commit ", FAULT_COMMIT },
		      { "malloc ", FAULT_MALLOC } };
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		size_t len = strlen(kinds[i].name);
		if (strncmp(buf, kinds[i].name, len) == 0) {
			k = kinds[i].kind;
			p = buf + len;
		}
	}
	long v = 0;
	while (*p >= '0' && *p <= '9')
		v = v * 10 + (*p++ - '0');
	if (fault_kind != FAULT_NONE) /* it did not fire: say how many events there were */
		counted(fault_n - fault_left);
	fault_kind = FAULT_NONE;
	fault_n = v;
	fault_left = v;
	if (v > 0)
		fault_kind = k;
	errno = saved;
}

/* ---- the VFS: the default one, with writes, reads and WAL syncs counted ---- */

struct ffile {
	sqlite3_file base;
	int wal;
	sqlite3_file *real; /* allocated right after this struct */
};

static sqlite3_vfs *real_vfs;

#define REAL(f) (((struct ffile *)(f))->real)

static int f_close(sqlite3_file *f)
{
	return REAL(f)->pMethods->xClose(REAL(f));
}
static int f_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
	if (hit(FAULT_READ))
		return SQLITE_IOERR_READ;
	return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}
static int f_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
	if (hit(FAULT_WRITE))
		return SQLITE_IOERR_WRITE;
	return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int f_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int f_sync(sqlite3_file *f, int flags)
{
	if (((struct ffile *)f)->wal && hit(FAULT_COMMIT))
		return SQLITE_IOERR_FSYNC;
	return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int f_size(sqlite3_file *f, sqlite3_int64 *size)
{
	return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int f_lock(sqlite3_file *f, int l)
{
	return REAL(f)->pMethods->xLock(REAL(f), l);
}
static int f_unlock(sqlite3_file *f, int l)
{
	return REAL(f)->pMethods->xUnlock(REAL(f), l);
}
static int f_check(sqlite3_file *f, int *out)
{
	return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int f_control(sqlite3_file *f, int op, void *arg)
{
	return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int f_sector(sqlite3_file *f)
{
	return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int f_chars(sqlite3_file *f)
{
	return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int f_shmmap(sqlite3_file *f, int pg, int sz, int extend, void volatile **pp)
{
	return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, extend, pp);
}
static int f_shmlock(sqlite3_file *f, int off, int n, int flags)
{
	return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void f_shmbarrier(sqlite3_file *f)
{
	REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int f_shmunmap(sqlite3_file *f, int del)
{
	return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static const sqlite3_io_methods methods = {
	2,         f_close,  f_read,  f_write,  f_truncate, f_sync,       f_size,     f_lock, f_unlock, f_check,
	f_control, f_sector, f_chars, f_shmmap, f_shmlock,  f_shmbarrier, f_shmunmap, NULL,   NULL,
};

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out)
{
	struct ffile *f = (struct ffile *)file;
	(void)vfs;
	f->real = (sqlite3_file *)(f + 1);
	f->wal = (flags & SQLITE_OPEN_WAL) != 0;
	int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out);
	f->base.pMethods = rc == SQLITE_OK && f->real->pMethods ? &methods : NULL;
	return rc;
}

static sqlite3_vfs vfs;

static int v_delete(sqlite3_vfs *v, const char *name, int sync)
{
	(void)v;
	return real_vfs->xDelete(real_vfs, name, sync);
}
static int v_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
	(void)v;
	return real_vfs->xAccess(real_vfs, name, flags, out);
}
static int v_full(sqlite3_vfs *v, const char *name, int n, char *out)
{
	(void)v;
	return real_vfs->xFullPathname(real_vfs, name, n, out);
}
static int v_random(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return real_vfs->xRandomness(real_vfs, n, out);
}
static int v_sleep(sqlite3_vfs *v, int us)
{
	(void)v;
	return real_vfs->xSleep(real_vfs, us);
}
static int v_time(sqlite3_vfs *v, double *out)
{
	(void)v;
	return real_vfs->xCurrentTime(real_vfs, out);
}
static int v_error(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return real_vfs->xGetLastError(real_vfs, n, out);
}
static int v_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
	(void)v;
	return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

/* ---- SQLite's allocator, with the Nth allocation failing ---- */

static sqlite3_mem_methods real_mem;

static void *m_malloc(int n)
{
	return hit(FAULT_MALLOC) ? NULL : real_mem.xMalloc(n);
}
static void m_free(void *p)
{
	real_mem.xFree(p);
}
static void *m_realloc(void *p, int n)
{
	return hit(FAULT_MALLOC) ? NULL : real_mem.xRealloc(p, n);
}
static int m_size(void *p)
{
	return real_mem.xSize(p);
}
static int m_roundup(int n)
{
	return real_mem.xRoundup(n);
}
static int m_init(void *p)
{
	return real_mem.xInit(p);
}
static void m_shutdown(void *p)
{
	real_mem.xShutdown(p);
}

static void install(struct paygate_options *o)
{
	(void)o;
	static sqlite3_mem_methods mem;
	if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &real_mem) != SQLITE_OK) {
		fprintf(stderr, "paygate-faults: SQLite is already initialised\n");
		exit(1);
	}
	mem = (sqlite3_mem_methods){ m_malloc,  m_free, m_realloc,  m_size,
		                     m_roundup, m_init, m_shutdown, real_mem.pAppData };
	if (sqlite3_config(SQLITE_CONFIG_MALLOC, &mem) != SQLITE_OK || sqlite3_initialize() != SQLITE_OK) {
		fprintf(stderr, "paygate-faults: cannot install the allocator\n");
		exit(1);
	}
	real_vfs = sqlite3_vfs_find(NULL);
	vfs = (sqlite3_vfs){ 3,
		             (int)sizeof(struct ffile) + real_vfs->szOsFile,
		             real_vfs->mxPathname,
		             NULL,
		             "faults",
		             NULL,
		             v_open,
		             v_delete,
		             v_access,
		             v_full,
		             NULL,
		             NULL,
		             NULL,
		             NULL,
		             v_random,
		             v_sleep,
		             v_time,
		             v_error,
		             v_time64,
		             NULL,
		             NULL,
		             NULL };
	struct sigaction sa = { .sa_handler = on_arm };
	sigemptyset(&sa.sa_mask);
	if (sqlite3_vfs_register(&vfs, 1) != SQLITE_OK || sigaction(SIGUSR2, &sa, NULL) < 0) {
		fprintf(stderr, "paygate-faults: cannot register the VFS\n");
		exit(1);
	}
}

/* One process (--single): the test's SIGUSR2 and the faults concern the engine itself. */
int main(int argc, char **argv)
{
	return single_daemon_main("paygate-faults", argc, argv, install);
}
