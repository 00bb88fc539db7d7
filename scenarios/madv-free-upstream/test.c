#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/mman.h>

int main() {
	int fd, i;
	char *buf;

	fd = open(DEV, O_RDONLY | O_DIRECT);

	buf = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE,
                	   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	for (i = 0; i < BUF_SIZE; i += PAGE_SIZE)
		buf[i] = 1; // init to non-zero

	madvise(buf, BUF_SIZE, MADV_FREE);

	read(fd, buf, BUF_SIZE);

	for (i = 0; i < BUF_SIZE; i += PAGE_SIZE)
		printf("%p: 0x%x\n", &buf[i], buf[i]);

	return 0;
}
