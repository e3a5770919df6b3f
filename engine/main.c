/* main.c — the paygate daemon's entry point (the daemon itself is daemon.c). */
#include "daemon.h"

int main(int argc, char **argv)
{
	return daemon_main("paygate", argc, argv, NULL);
}
