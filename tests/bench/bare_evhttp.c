/* bare_evhttp.c — the baseline for `make bench`: plain evhttp answering the same JSON as the paygate route. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

static void on_request(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();
	(void)arg;
	evbuffer_add(b, "{\"hello\":\"world\"}", 17);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json; charset=utf-8");
	evhttp_add_header(evhttp_request_get_output_headers(req), "X-Request-Id", "0000000000000000");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 0;
	struct event_base *base = event_base_new();
	struct evhttp *http = evhttp_new(base);
	struct evhttp_bound_socket *s;

	signal(SIGPIPE, SIG_IGN);
	/* The same limits paygate sets, so the comparison is fair. */
	evhttp_set_max_headers_size(http, 16384);
	evhttp_set_max_body_size(http, 65536);
	evhttp_set_timeout(http, 10);
	evhttp_set_gencb(http, on_request, NULL);
	s = evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)port);
	if (!s) {
		fprintf(stderr, "bare_evhttp: cannot listen on 127.0.0.1:%d\n", port);
		return 1;
	}
	struct sockaddr_in sin;
	socklen_t len = sizeof sin;
	if (getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&sin, &len) == 0)
		port = ntohs(sin.sin_port);
	printf("bare evhttp listening on http://127.0.0.1:%d\n", port);
	fflush(stdout);
	event_base_dispatch(base);
	evhttp_free(http);
	event_base_free(base);
	return 0;
}
