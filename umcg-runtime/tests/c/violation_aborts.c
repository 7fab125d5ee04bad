/*
 * violation_aborts.c - a contract violation, which the real kernel punished with SIGSEGV,
 * aborts the process through the C ABI. A worker registers with idle_workers_ptr == 0: the
 * wake hook that registration runs has no idle-worker list to queue it on (spec §2.5.2
 * step 3). Expected: death by SIGABRT with the violation named on stderr (tests/c_abi.rs
 * checks both); returning from umcg_ctl is a failure.
 */
#include "umcg_test.h"

#include <sys/resource.h>

int main(void) {
    watchdog(30);
    /* No core file for the expected abort. */
    struct rlimit no_core = {0, 0};
    CHECK(setrlimit(RLIMIT_CORE, &no_core) == 0);
    static struct group g;
    static struct umcg_task w;
    task_init_worker(&w, &g);
    w.idle_workers_ptr = 0;
    long r = umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &w);
    fprintf(stderr, "violation_aborts: umcg_ctl returned %ld (errno %d) instead of aborting\n", r,
            errno);
    return 1;
}
