/* memrace.h: optional hooks for a program that memrace's exec workload runs.
 *
 * Include it and call, where your program wants the bench to know or to wait:
 *   memrace_ready("name")  announce READY name: schedules then use $name.tid / $name.cpu
 *                          (this thread's tid and CPU);
 *   memrace_gate("name")   announce gate `name` and spin in user mode until the schedule
 *                          says { open = "name" }; 0 when opened, -1 on its time bound;
 *   memrace_phase("name")  report PHASE name (a schedule can { wait = "PHASE name" });
 *   memrace_fact("key", v) report FACT key v.
 * Names are 1 to 32 letters, digits, '-', '_' or '.', and must not be a name the harness
 * announces itself (a gated [[process]] or a reclaim step). Outside memrace (no
 * MEMRACE_CTL_FD in the environment) every call does nothing and memrace_gate returns 0
 * at once, so the program still runs on its own. No dependencies beyond libc. */
#ifndef MEMRACE_H
#define MEMRACE_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define MEMRACE_GATES 1024

static inline int memrace_env_fd_(const char *name)
{
	const char *v = getenv(name);
	return v ? atoi(v) : -1;
}

/* The gate page is mapped on first use, before anything is announced: a schedule armed
 * after READY then sees none of memrace.h's own system calls. */
static inline volatile const unsigned *memrace_gates_(void)
{
	static volatile const unsigned *gates;
	int fd = memrace_env_fd_("MEMRACE_GATE_FD");
	void *p;

	if (!gates && fd >= 0) {
		p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
		if (p != MAP_FAILED)
			gates = p;
	}
	return gates;
}

static inline int memrace_ready(const char *name)
{
	int fd = memrace_env_fd_("MEMRACE_CTL_FD");

	memrace_gates_();
	return fd < 0 ? -1 : dprintf(fd, "READY %s %ld\n", name, (long)syscall(SYS_gettid)) > 0 ? 0 : -1;
}

static inline int memrace_phase(const char *name)
{
	int fd = memrace_env_fd_("MEMRACE_CTL_FD");

	return fd < 0 ? -1 : dprintf(fd, "PHASE %s\n", name) > 0 ? 0 : -1;
}

static inline int memrace_fact(const char *key, long long value)
{
	int fd = memrace_env_fd_("MEMRACE_CTL_FD");

	return fd < 0 ? -1 : dprintf(fd, "FACT %s %lld\n", key, value) > 0 ? 0 : -1;
}

static inline int memrace_gate(const char *name)
{
	static int next_slot;
	int fd = memrace_env_fd_("MEMRACE_CTL_FD");
	const char *limit = getenv("MEMRACE_GATE_TIMEOUT_MS");
	long long bound_ns = (limit ? atoll(limit) : 60000) * 1000000LL;
	volatile const unsigned *gates = memrace_gates_();
	struct timespec t0, t;
	int slot = next_slot++;

	if (fd < 0 || !gates)
		return 0;
	if (slot >= MEMRACE_GATES || dprintf(fd, "GATE %s %d\n", name, slot) <= 0)
		return -1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		/* Check the clock rarely: without a vDSO clock it is a system call. */
		for (int i = 0; i < (1 << 16); i++)
			if (gates[slot])
				return 0;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000000000LL + (t.tv_nsec - t0.tv_nsec) > bound_ns)
			return -1;
	}
}

#endif
