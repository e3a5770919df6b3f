/* fuzz_http.c — libFuzzer target: raw bytes as an HTTP request on a real connection, through paygate_handle_request. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/http.h>

#include "fixture.h"
#include "replay.h"

/*
** A host program's evhttp on 127.0.0.1 hands every request to
** paygate_handle_request (the embedding path; the daemon's own listener is
** the same code). Each input is written as is on a new connection, which is
** then half-closed; the gateway must answer with an HTTP status line or close
** the connection, within 2 s, and live on. The scripts (tests/fuzz/scripts)
** read every part of a request: body as JSON, query, headers, path captures,
** database writes.
*/

static int port;
static struct evhttp *front; /* the host's evhttp, in front of paygate */

/* At exit, before the fixture frees the engine and the loop (atexit runs the latest first). */
static void close_front(void)
{
	evhttp_free(front);
}

static void on_http(struct evhttp_request *req, void *arg)
{
	paygate_handle_request(arg, req);
}

static void setup(void)
{
	if (port)
		return;
	struct paygate *pg = fx_engine();
	struct evhttp *http = front = evhttp_new(fx_base);
	struct evhttp_bound_socket *bs = http ? evhttp_bind_socket_with_handle(http, "127.0.0.1", 0) : NULL;
	if (!bs) {
		fprintf(stderr, "fuzz_http: cannot listen on 127.0.0.1\n");
		exit(2);
	}
	evhttp_set_max_headers_size(http, 16384);
	evhttp_set_max_body_size(http, 1 << 20);
	evhttp_set_timeout(http, 5);
	evhttp_set_gencb(http, on_http, pg);
	atexit(close_front);
	struct sockaddr_in sa;
	socklen_t len = sizeof sa;
	getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &len);
	port = ntohs(sa.sin_port);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char answer[64];
	size_t got = 0;
	setup();
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		fprintf(stderr, "fuzz_http: cannot connect: %s\n", strerror(errno));
		abort();
	}
	fcntl(fd, F_SETFL, O_NONBLOCK);
	size_t off = 0;
	int eof = 0;
	for (int ms = 0; ms < 2000 && !eof; ms++) {
		if (off < size) {
			ssize_t w = write(fd, data + off, size - off);
			if (w > 0)
				off += (size_t)w;
			else if (w < 0 && errno != EAGAIN)
				off = size; /* the gateway closed early: fine */
			if (off == size)
				shutdown(fd, SHUT_WR);
		} else if (size == 0) {
			shutdown(fd, SHUT_WR);
		}
		char buf[4096];
		ssize_t n;
		while ((n = read(fd, buf, sizeof buf)) > 0) {
			for (ssize_t i = 0; i < n && got < sizeof answer; i++)
				answer[got++] = buf[i];
		}
		if (n == 0 || (n < 0 && errno != EAGAIN))
			eof = 1;
		int none = 0;
		if (!eof)
			fx_run_until(&none, 1);
	}
	struct linger now = { 1, 0 }; /* reset, not TIME_WAIT: thousands of inputs would use up the local ports */
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &now, sizeof now);
	close(fd);
	if (!eof) {
		fprintf(stderr, "fuzz_http: no answer and no close within 2 s\n");
		abort();
	}
	if (getenv("FUZZ_SHOW")) /* what came back, for a person replaying by hand */
		fprintf(stderr, "fuzz_http: %.*s\n",
		        (int)(memchr(answer, '\r', got) ? (char *)memchr(answer, '\r', got) - answer : (ptrdiff_t)got),
		        answer);
	if (got > 0 && (got < 5 || memcmp(answer, "HTTP/", 5) != 0)) { /* evhttp answers in the client's version */
		fprintf(stderr, "fuzz_http: the answer does not start with a status line\n");
		abort();
	}
	return 0;
}
