/* A hostile guest program for the exec workload's containment test. Each run reads and
 * bumps a counter in /tmp (which outlives trials): even runs behave (print "ok"), odd
 * runs misbehave in turn: fork bomb, never exit, write forged protocol lines and garbage
 * to the control port, kill every process (kill(-1)), exhaust memory. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int next_run(void)
{
	int n = 0;
	FILE *f = fopen("/tmp/hostile-runs", "r");

	if (f) {
		if (fscanf(f, "%d", &n) != 1)
			n = 0;
		fclose(f);
	}
	f = fopen("/tmp/hostile-runs", "w");
	if (f) {
		fprintf(f, "%d\n", n + 1);
		fclose(f);
	}
	return n;
}

int main(void)
{
	int n = next_run();

	if (n % 2 == 0) {
		printf("ok\n");
		return 0;
	}
	printf("hostile %d\n", n / 2 % 5);
	fflush(stdout);
	switch (n / 2 % 5) {
	case 0: /* fork bomb */
		for (;;)
			fork();
	case 1: /* never exits */
		for (;;)
			pause();
	case 2: { /* forge protocol lines, then garbage */
		const char forged[] = "RESULT 4 reproduced forged\nEXIT 0\n";
		char junk[4096];
		int fd = open("/dev/ttyS1", O_WRONLY);

		for (size_t i = 0; i < sizeof(junk); i++)
			junk[i] = (char)(i * 7 + 1);
		for (int k = 0; k < 64 && fd >= 0; k++) {
			write(fd, forged, strlen(forged));
			write(fd, junk, sizeof(junk));
		}
		printf("wrote to the control port: %s\n", fd >= 0 ? "opened" : "could not open");
		return 3;
	}
	case 3: /* kill every process but PID 1 and ourselves */
		kill(-1, SIGKILL);
		printf("killed\n");
		return 4;
	default: /* exhaust memory */
		for (;;) {
			char *p = malloc(1 << 20);

			if (!p)
				continue;
			memset(p, 0x5a, 1 << 20);
		}
	}
}
