/* log.h — structured logs (logfmt lines: ts= level= req= msg= key=value ...). */
#ifndef PAYGATE_LOG_H
#define PAYGATE_LOG_H

#include <stdio.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* One logger per engine: no process-wide state, so two engines can log differently. */
struct log {
	enum log_level level;
	FILE *out; /* stderr unless the host says otherwise */
};

void log_init(struct log *lg, enum log_level level, FILE *out);

/*
** Write one line: ts, level, req (when reqid is non-NULL), msg (quoted), then
** `fields`, which must already be logfmt ("k=v k2=\"v 2\""), or NULL.
** Never fails; a line that does not fit 8 KiB is truncated.
*/
void log_emit(struct log *lg, enum log_level level, const char *reqid, const char *msg, const char *fields);

/* printf-style message, no extra fields. */
void log_msg(struct log *lg, enum log_level level, const char *reqid, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Append `key=value` to buf (length *len, capacity cap), quoting value when needed. */
void log_field(char *buf, size_t cap, size_t *len, const char *key, const char *value);

int log_parse_level(const char *name, enum log_level *out);
const char *log_level_name(enum log_level level);

#define log_debug(lg, req, ...) log_msg((lg), LOG_DEBUG, (req), __VA_ARGS__)
#define log_info(lg, req, ...)  log_msg((lg), LOG_INFO, (req), __VA_ARGS__)
#define log_warn(lg, req, ...)  log_msg((lg), LOG_WARN, (req), __VA_ARGS__)
#define log_error(lg, req, ...) log_msg((lg), LOG_ERROR, (req), __VA_ARGS__)

#endif
