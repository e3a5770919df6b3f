/* clock.c — the wall-clock time that scripts, jobs and tokens see. */
#include "clock.h"

#include <stddef.h>
#include <sys/time.h>

int64_t clock_now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}
