/* The upstream reproducer's device preparation, `yes | dd of=test.img bs=1k count=16`:
 * 16 KiB of "y\n" on DEV, flushed to the device so that the reproducer's O_DIRECT read
 * has no dirty page cache to write back first. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
	char block[1024];
	int fd = open(DEV, O_WRONLY);

	if (fd < 0) {
		perror("open " DEV);
		return 1;
	}
	for (size_t i = 0; i < sizeof(block); i += 2)
		memcpy(block + i, "y\n", 2);
	for (int k = 0; k < 16; k++) {
		if (write(fd, block, sizeof(block)) != (ssize_t)sizeof(block)) {
			perror("write " DEV);
			return 1;
		}
	}
	if (fsync(fd) != 0) {
		perror("fsync " DEV);
		return 1;
	}
	return close(fd) != 0;
}
