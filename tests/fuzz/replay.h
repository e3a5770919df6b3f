/* replay.h — the corpus replayer main of a fuzz target built without libFuzzer (make test replays the corpora). */
#ifndef PAYGATE_FUZZ_REPLAY_H
#define PAYGATE_FUZZ_REPLAY_H

#include <stdint.h>
#include <stddef.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef PAYGATE_LIBFUZZER

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>

/* Replays one file: 0, or -1 when it cannot be read. */
static int replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		printf("not ok - %s\n#   cannot open it\n", path);
		return -1;
	}
	size_t cap = 1 << 16, len = 0, n;
	uint8_t *buf = malloc(cap);
	while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
		len += n;
		if (len == cap) {
			uint8_t *bigger = realloc(buf, cap *= 2);
			if (!bigger) {
				free(buf);
				buf = NULL;
			}
			buf = bigger;
		}
	}
	fclose(f);
	if (!buf) {
		printf("not ok - %s\n#   out of memory\n", path);
		return -1;
	}
	LLVMFuzzerTestOneInput(buf, len);
	free(buf);
	printf("ok - %s\n", path);
	return 0;
}

/* A file, or every regular file directly inside a directory. */
static void replay(const char *path, int *passed, int *failed)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char sub[4096];

	if (!d) {
		*(replay_file(path) == 0 ? passed : failed) += 1;
		return;
	}
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		*(replay_file(sub) == 0 ? passed : failed) += 1;
	}
	closedir(d);
}

/* A crash or a broken invariant (abort) ends the run; an unreadable input counts as failed. */
int main(int argc, char **argv)
{
	int passed = 0, failed = 0;
	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...  (replays inputs; build with libFuzzer to fuzz)\n", argv[0]);
		return 2;
	}
	for (int i = 1; i < argc; i++)
		replay(argv[i], &passed, &failed);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}

#endif
#endif
