/* clock.c — the wall-clock time that scripts, jobs and tokens see, and elapsed time. */
#include "clock.h"

#include <stddef.h>
#include <sys/time.h>
#include <time.h>

int64_t clock_now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

int64_t clock_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
