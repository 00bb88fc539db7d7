/* Moves 1 MiB of anonymous memory with mremap(MREMAP_FIXED) and checks what the caller
 * is promised either way: after a move the data is at the new address; after a failed
 * move the old mapping is still there with its data. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define LEN (1 << 20)
#define FILL 0x5a

static const char *holds_fill(const char *p)
{
	for (size_t i = 0; i < LEN; i += 4096)
		if (p[i] != FILL)
			return "lost";
	return "intact";
}

int main(void)
{
	char *src = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* A reserved destination, so the move needs a new VMA there. */
	char *dst = mmap(NULL, LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *moved;

	if (src == MAP_FAILED || dst == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	memset(src, FILL, LEN);
	moved = mremap(src, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (moved == MAP_FAILED) {
		int err = errno;

		printf("mremap failed: %s; source %s\n", strerror(err), holds_fill(src));
		return 0;
	}
	printf("mremap moved the mapping; data %s\n", holds_fill(moved));
	return 0;
}
