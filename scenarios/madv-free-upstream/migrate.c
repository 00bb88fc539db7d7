/* A page migration that the schedule parks inside move_pages(2), after do_pages_move()
 * has called lru_cache_disable() and before it calls lru_cache_enable().
 *
 * Why the upstream race needs one: MADV_FREE (folio_mark_lazyfree) only queues a page in
 * the calling CPU's lru_lazyfree folio batch. The page becomes lazyfree (PG_swapbacked
 * cleared, the state reclaim may discard) when that CPU drains the batch, and the reader's
 * CPU never drains while the read is parked. While any CPU has the LRU caches disabled,
 * the batch is moved at once (lru_cache_disabled() in __folio_batch_add_and_move): the
 * state a busy machine reaches when the batch fills or another CPU drains it. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
	char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *pages[1] = { page };
	int nodes[1] = { 0 };
	int status[1] = { -1 };
	long ret;

	if (page == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	page[0] = 1;
	/* Node 0 is always online: the page stays where it is, the call still runs
	 * do_pages_move() with the LRU caches disabled. */
	ret = syscall(SYS_move_pages, 0, 1, pages, nodes, status, 0);
	printf("move_pages: %ld, page status %d\n", ret, status[0]);
	return ret < 0;
}
