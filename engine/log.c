/* log.c — structured logs (logfmt lines: ts= level= req= msg= key=value ...). */
#include "log.h"

#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void log_init(struct log *lg, enum log_level level, FILE *out)
{
	lg->level = level;
	lg->out = out ? out : stderr;
}

const char *log_level_name(enum log_level level)
{
	return level_names[level];
}

int log_parse_level(const char *name, enum log_level *out)
{
	for (int i = LOG_DEBUG; i <= LOG_ERROR; i++) {
		if (strcmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

/* Does `v` need quotes in logfmt (empty, spaces, quotes, '=' or control bytes)? */
static int needs_quotes(const char *v)
{
	if (*v == '\0')
		return 1;
	for (; *v; v++) {
		unsigned char c = (unsigned char)*v;
		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
			return 1;
	}
	return 0;
}

static void put(char *buf, size_t cap, size_t *len, const char *s, size_t n)
{
	if (*len + 1 >= cap)
		return;
	if (n > cap - 1 - *len)
		n = cap - 1 - *len;
	memcpy(buf + *len, s, n);
	*len += n;
	buf[*len] = '\0';
}

/* Append v, quoted and escaped so that one log record is always one line. */
static void put_value(char *buf, size_t cap, size_t *len, const char *v)
{
	if (!needs_quotes(v)) {
		put(buf, cap, len, v, strlen(v));
		return;
	}
	put(buf, cap, len, "\"", 1);
	for (; *v; v++) {
		unsigned char c = (unsigned char)*v;
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(buf, cap, len, esc, 2);
		} else if (c == '\n') {
			put(buf, cap, len, "\\n", 2);
		} else if (c < ' ' || c == 0x7f) {
			int n = snprintf(esc, sizeof esc, "\\x%02x", c);
			put(buf, cap, len, esc, (size_t)n);
		} else {
			put(buf, cap, len, (const char *)&c, 1);
		}
	}
	put(buf, cap, len, "\"", 1);
}

void log_field(char *buf, size_t cap, size_t *len, const char *key, const char *value)
{
	if (*len > 0)
		put(buf, cap, len, " ", 1);
	put(buf, cap, len, key, strlen(key));
	put(buf, cap, len, "=", 1);
	put_value(buf, cap, len, value ? value : "");
}

void log_emit(struct log *lg, enum log_level level, const char *reqid, const char *msg, const char *fields)
{
	char line[8192], ts[40];
	size_t len = 0;
	struct timeval tv;
	struct tm tm;

	if (level < lg->level)
		return;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));

	line[0] = '\0';
	log_field(line, sizeof line, &len, "ts", ts);
	log_field(line, sizeof line, &len, "level", level_names[level]);
	if (reqid)
		log_field(line, sizeof line, &len, "req", reqid);
	log_field(line, sizeof line, &len, "msg", msg);
	if (fields && *fields) {
		put(line, sizeof line, &len, " ", 1);
		put(line, sizeof line, &len, fields, strlen(fields));
	}
	fprintf(lg->out, "%s\n", line);
	fflush(lg->out);
}

void log_msg(struct log *lg, enum log_level level, const char *reqid, const char *fmt, ...)
{
	char msg[4096];
	va_list ap;

	if (level < lg->level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_emit(lg, level, reqid, msg, NULL);
}
