/* clock.h — the wall-clock time that scripts, jobs and tokens see. */
#ifndef PAYGATE_CLOCK_H
#define PAYGATE_CLOCK_H

#include <stdint.h>

/* Milliseconds since the epoch (wall clock). */
int64_t clock_now_ms(void);

#endif
