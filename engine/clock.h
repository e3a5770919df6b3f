/* clock.h — the wall-clock time that scripts, jobs and tokens see, and elapsed time. */
#ifndef PAYGATE_CLOCK_H
#define PAYGATE_CLOCK_H

#include <stdint.h>

/* Milliseconds since the epoch (wall clock). */
int64_t clock_now_ms(void);

/* Microseconds on the monotonic clock, read precisely (not the coarse clock libevent's timers
   use, which lags by up to a tick): for "has this much time passed yet". */
int64_t clock_mono_us(void);

#endif
