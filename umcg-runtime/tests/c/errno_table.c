/*
 * errno_table.c - every errno row of spec §2.3 (umcg_ctl) and §2.4 (umcg_wait), through the
 * C ABI, plus the extensions: the timeout of umcg_wait, umcg_kick and umcg_set_idle_wakeup.
 * Each call must return -1 with the expected errno (or the expected value); all rows run,
 * and the program fails if any did not match.
 */
#include "umcg_test.h"

#include <semaphore.h>
#include <sys/mman.h>

static int failures;

static void expect_err(long r, int e, int expected, const char *what, int line) {
    if (r != -1 || e != expected) {
        fprintf(stderr, "line %d: %s: expected -1 with errno %d (%s), got %ld with errno %d (%s)\n",
                line, what, expected, strerror(expected), r, e, strerror(e));
        failures++;
    }
}

static void expect_ret(long r, long expected, const char *what, int line) {
    if (r != expected) {
        fprintf(stderr, "line %d: %s: expected %ld, got %ld (errno %d: %s)\n", line, what,
                expected, r, errno, strerror(errno));
        failures++;
    }
}

/* errno is sampled right after the call, before anything else can change it. */
#define ERR(call, e)                                                                       \
    do {                                                                                   \
        errno = 0;                                                                         \
        long r_ = (call);                                                                  \
        expect_err(r_, errno, (e), #call, __LINE__);                                       \
    } while (0)
#define RET(call, v) expect_ret((call), (v), #call, __LINE__)

/* A live thread of this process that is not a UMCG task. */
static sem_t bystander_go, bystander_done;
static _Atomic uint32_t bystander_tid;

static void *bystander(void *arg) {
    (void)arg;
    atomic_store(&bystander_tid, get_tid());
    CHECK(sem_post(&bystander_go) == 0);
    while (sem_wait(&bystander_done) != 0)
        CHECK(errno == EINTR);
    return NULL;
}

int main(void) {
    watchdog(30);

    /* Extension: umcg_set_idle_wakeup. Unknown modes; any mode while nothing is registered. */
    ERR(umcg_set_idle_wakeup(99), EINVAL);
    ERR(umcg_set_idle_wakeup(0), EINVAL);
    RET(umcg_set_idle_wakeup(UMCG_IDLE_WAKEUP_EVENTFD), 0);
    RET(umcg_set_idle_wakeup(UMCG_IDLE_WAKEUP_LIST), 0);
    RET(umcg_set_idle_wakeup(UMCG_IDLE_WAKEUP_LIST), 0);

    /* §2.3 unregister: not registered. §2.4 step 1: wait while not registered. */
    ERR(umcg_ctl(UMCG_CTL_UNREGISTER, NULL), EINVAL);
    ERR(umcg_wait(0, 0), EINVAL);
    ERR(umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), EINVAL);

    /* The hooks are no-ops for a thread that is not a worker, and keep errno. */
    errno = 4242;
    umcg_block_begin();
    umcg_block_end();
    RET(errno, 4242);

    static struct umcg_task s; /* static: 64-byte aligned by its type */
    memset(&s, 0, sizeof s);
    s.state = UMCG_TASK_RUNNING;
    s.api_version = UMCG_API_VERSION;

    /* §2.3 register step 1: flags without REGISTER, unknown bits, UNREGISTER with more. */
    ERR(umcg_ctl(0, &s), EINVAL);
    ERR(umcg_ctl(UMCG_CTL_WORKER, &s), EINVAL);
    ERR(umcg_ctl(UMCG_CTL_REGISTER | 0x40, &s), EINVAL);
    ERR(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_UNREGISTER, &s), EINVAL);
    ERR(umcg_ctl(UMCG_CTL_UNREGISTER | UMCG_CTL_WORKER, NULL), EINVAL);

    /* Step 3: self NULL, misaligned, unmapped. */
    ERR(umcg_ctl(UMCG_CTL_REGISTER, NULL), EFAULT);
    ERR(umcg_ctl(UMCG_CTL_REGISTER, (struct umcg_task *)((char *)&s + 8)), EFAULT);
    long page = sysconf(_SC_PAGESIZE);
    void *gone = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(gone != MAP_FAILED);
    CHECK(munmap(gone, (size_t)page) == 0);
    ERR(umcg_ctl(UMCG_CTL_REGISTER, (struct umcg_task *)gone), EFAULT);
    ERR(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, (struct umcg_task *)gone), EFAULT);

    /* Step 4: an unsupported api_version returns +1, the supported version. */
    s.api_version = 2;
    RET(umcg_ctl(UMCG_CTL_REGISTER, &s), 1);
    s.api_version = 0;
    RET(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &s), 1);
    s.api_version = UMCG_API_VERSION;

    /* Step 5: server_tid / next_tid must be 0. */
    s.server_tid = 5;
    ERR(umcg_ctl(UMCG_CTL_REGISTER, &s), EINVAL);
    s.server_tid = 0;
    s.next_tid = 5;
    ERR(umcg_ctl(UMCG_CTL_REGISTER, &s), EINVAL);
    s.next_tid = 0;

    /* Steps 6-7: a server must be exactly RUNNING, a worker exactly IDLE. */
    s.state = UMCG_TASK_IDLE;
    ERR(umcg_ctl(UMCG_CTL_REGISTER, &s), EINVAL);
    s.state = UMCG_TASK_RUNNING | 0x01000000u;
    ERR(umcg_ctl(UMCG_CTL_REGISTER, &s), EINVAL);
    s.state = UMCG_TASK_RUNNING;
    ERR(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &s), EINVAL);
    s.state = UMCG_TASK_IDLE | UMCG_TF_LOCKED;
    ERR(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &s), EINVAL);
    s.state = UMCG_TASK_BLOCKED;
    ERR(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &s), EINVAL);

    /* A good server registration; step 2: registering again; unregister with a pointer. */
    s.state = UMCG_TASK_RUNNING;
    RET(umcg_ctl(UMCG_CTL_REGISTER, &s), 0);
    uint32_t me = get_tid();
    STORE32(&s.server_tid, me);
    ERR(umcg_ctl(UMCG_CTL_REGISTER, &s), EINVAL);
    ERR(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &s), EINVAL);
    ERR(umcg_ctl(UMCG_CTL_UNREGISTER, &s), EINVAL);
    /* Extension: the mode cannot be set while tasks are registered. */
    ERR(umcg_set_idle_wakeup(UMCG_IDLE_WAKEUP_LIST), EBUSY);
    ERR(umcg_set_idle_wakeup(7), EINVAL);

    /* The hooks are no-ops for a server too, and keep errno. */
    errno = 4343;
    umcg_block_begin();
    umcg_block_end();
    RET(errno, 4343);
    RET(LOAD32(&s.state), UMCG_TASK_RUNNING);

    /* §2.4 step 3, WAKE_ONLY: next_tid 0, a timeout, an unknown flag. */
    ERR(umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), EINVAL);
    STORE32(&s.next_tid, me);
    ERR(umcg_wait(UMCG_WAIT_WAKE_ONLY, 1), EINVAL);
    ERR(umcg_wait(UMCG_WAIT_WAKE_ONLY | 4, 0), EINVAL);
    ERR(umcg_wait(UMCG_WAIT_WAKE_ONLY | 0x100, 0), EINVAL);
    /* ... and the valid forms (waking ourselves is harmless). */
    RET(umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), 0);
    RET(umcg_wait(UMCG_WAIT_WAKE_ONLY | UMCG_WAIT_WF_CURRENT_CPU, 0), 0);

    /* WAKE_ONLY of a live thread that is not a UMCG task, and of no thread: ESRCH. */
    pthread_t by;
    CHECK(sem_init(&bystander_go, 0, 0) == 0 && sem_init(&bystander_done, 0, 0) == 0);
    CHECK(pthread_create(&by, NULL, bystander, NULL) == 0);
    while (sem_wait(&bystander_go) != 0)
        CHECK(errno == EINTR);
    STORE32(&s.next_tid, atomic_load(&bystander_tid));
    ERR(umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), ESRCH);
    STORE32(&s.next_tid, 0x7ffffff0u);
    ERR(umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), ESRCH);

    /* Step 5: a context switch to a thread that does not exist: ESRCH. */
    ERR(umcg_wait(0, 0), ESRCH);
    STORE32(&s.next_tid, 0);

    /* Extension (v0.4+ timeout): an absolute timeout in the past, or about to pass:
     * ETIMEDOUT, and the server is still IDLE. */
    STORE32(&s.state, UMCG_TASK_IDLE);
    ERR(umcg_wait(0, 1), ETIMEDOUT);
    RET(LOAD32(&s.state), UMCG_TASK_IDLE);
    ERR(umcg_wait(0, realtime_ns() - 1000000000u), ETIMEDOUT);
    ERR(umcg_wait(0, realtime_ns() + 1000000u), ETIMEDOUT);
    RET(LOAD32(&s.state), UMCG_TASK_IDLE);
    /* A server that is RUNNING returns at once, timeout or not. */
    STORE32(&s.state, UMCG_TASK_RUNNING);
    RET(umcg_wait(0, realtime_ns() + 1000000000u), 0);

    /* Extension: umcg_kick. Flags; no such task; a server; a thread that is not UMCG. */
    ERR(umcg_kick(1, me), EINVAL);
    ERR(umcg_kick(0, 0x7ffffff0u), ESRCH);
    ERR(umcg_kick(0, me), EINVAL);
    ERR(umcg_kick(0, atomic_load(&bystander_tid)), ESRCH);

    /* Unregister; then once more: not registered. */
    RET(umcg_ctl(UMCG_CTL_UNREGISTER, NULL), 0);
    ERR(umcg_ctl(UMCG_CTL_UNREGISTER, NULL), EINVAL);
    ERR(umcg_wait(0, 0), EINVAL);
    /* Nothing registered any more: any mode is accepted again. */
    RET(umcg_set_idle_wakeup(UMCG_IDLE_WAKEUP_EVENTFD), 0);
    RET(umcg_set_idle_wakeup(UMCG_IDLE_WAKEUP_LIST), 0);

    CHECK(sem_post(&bystander_done) == 0);
    CHECK(pthread_join(by, NULL) == 0);

    if (failures) {
        fprintf(stderr, "errno_table: %d row(s) failed\n", failures);
        return 1;
    }
    printf("errno_table: all rows as specified\n");
    return 0;
}
