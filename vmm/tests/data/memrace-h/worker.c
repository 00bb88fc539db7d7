/* memrace.h end to end (vmm/tests/scenario_exec.rs): announces itself, waits on its own
 * gate, makes the system call the schedule parks, reports a phase and a fact. Along the
 * way it tries two forgeries the harness must refuse: a READY for a tid that is not one
 * of its threads, and a READY under a name the harness announces itself. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "memrace.h"

int main(int argc, char **argv)
{
	int ctl = memrace_env_fd_("MEMRACE_CTL_FD");

	if (argc > 1)
		return 0; /* the bystander: a gated process whose name is reserved */
	if (ctl < 0) {
		puts("no memrace channel");
		return 1;
	}
	dprintf(ctl, "READY forged 1\n");
	memrace_ready("bystander");
	memrace_ready("worker");
	if (memrace_gate("go") != 0) {
		puts("gate timeout");
		return 1;
	}
	getppid();
	memrace_phase("after-getppid");
	memrace_fact("answer", 42);
	puts("ok");
	return 0;
}
