/*
 * bad_input.c - bad input through the C ABI (issue 6; tests/bad_input.rs does the same
 * through the Rust API, RELIABILITY.md lists the matrix).
 *
 * 1. The errno matrix: every errno row of spec §2.3 (umcg_ctl) and §2.4 (umcg_wait), from an
 *    unregistered thread, from a registered server, and from a worker that a server runs.
 *    Each row must return exactly what the spec gives: -1 with the errno, 0, or +1 for an
 *    unsupported api_version. All rows run; the program fails listing every row that did not
 *    match.
 * 2. Corrupted user-space lists: each case breaks what a worker's wake hook reads (the
 *    idle-server list, the worker's idle_servers_ptr / idle_workers_ptr, the idle-worker
 *    head word) and drives one kernel path that reads it: the registration of the worker,
 *    umcg_block_end after umcg_block_begin, or a WAKE_ONLY aimed at the worker waiting in
 *    umcg_wait. Through the C ABI a contract violation aborts the process (the kernel's
 *    SIGSEGV), so the program runs itself once per case and path ("bad_input CASE PATH")
 *    and checks that the child died of SIGABRT, naming the violation the child announced
 *    ("expecting: ...") on stderr. A child that returns, hangs (its alarm) or crashes
 *    otherwise fails the row.
 *
 * Hangs: alarm(50) for the whole program, alarm(20) in every child. Run in both idle-wakeup
 * modes (UMCG_IDLE_WAKEUP=list / eventfd).
 */
#include "umcg_test.h"

#include <inttypes.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

/* ---- fixtures ------------------------------------------------------------------------- */

/* Not readable: `hole` was unmapped, its neighbour `prot_none` is PROT_NONE. The pages are
 * placed low (a hint: 256 MiB, below PIE executables and their heap, application memory
 * under AddressSanitizer), far below where mmap(NULL, ...) puts anything: a one-page hole
 * among the mmap area's pages got filled by AddressSanitizer's runtime, which maps single
 * pages, and the "unmapped" address was readable. */
static uint64_t hole, prot_none;

static void map_bad_pages(void) {
    long page = sysconf(_SC_PAGESIZE);
    char *base = mmap((void *)(uintptr_t)0x10000000u, 3 * (size_t)page, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(base != MAP_FAILED);
    CHECK(munmap(base + page, (size_t)page) == 0);
    hole = addr_of(base + page);
    prot_none = addr_of(base);
}

#define NONCANONICAL ((uint64_t)0xdead000000000000u)
#define KERNEL_HALF ((uint64_t)0xffff800000000000u)
#define GARBAGE ((uint64_t)0x0000123456789ab8u) /* 8-aligned, not node-shaped, unmapped */
#define NO_SUCH_TID 0x7ffffff0u

static struct umcg_task *at(uint64_t a) { return (struct umcg_task *)(uintptr_t)a; }

static void sem_wait_retrying(sem_t *s) {
    while (sem_wait(s) != 0)
        CHECK(errno == EINTR);
}

/* A registered server, RUNNING, parked in user space until released. Registered raw:
 * server_tid stays 0, so its task also passes another thread's registration checks up to
 * "already registered". */
struct parked {
    struct umcg_task task; /* first member: 64-byte aligned */
    _Atomic uint32_t tid;
    uint64_t reset; /* its idle-server node's reset value */
    sem_t release;
    pthread_t th;
};

static void *parked_main(void *arg) {
    struct parked *p = arg;
    memset(&p->task, 0, sizeof p->task);
    p->task.state = UMCG_TASK_RUNNING;
    p->task.api_version = UMCG_API_VERSION;
    p->task.idle_servers_ptr = p->reset;
    CHECK(umcg_ctl(UMCG_CTL_REGISTER, &p->task) == 0);
    atomic_store(&p->tid, get_tid());
    sem_wait_retrying(&p->release);
    CHECK(umcg_ctl(UMCG_CTL_UNREGISTER, NULL) == 0);
    return NULL;
}

static void park(struct parked *p, uint64_t reset) {
    p->reset = reset;
    CHECK(sem_init(&p->release, 0, 0) == 0);
    CHECK(pthread_create(&p->th, NULL, parked_main, p) == 0);
    while (atomic_load(&p->tid) == 0)
        usleep(100);
}

static void unpark(struct parked *p) {
    CHECK(sem_post(&p->release) == 0);
    CHECK(pthread_join(p->th, NULL) == 0);
}

static uint64_t node_of(struct umcg_task *t) { return addr_of(&t->idle_servers_ptr); }

/* Threads that rows name. */
static uint32_t dead_tid;
static _Atomic uint32_t bystander_tid;
static sem_t bystander_go, bystander_done;
static struct parked other_server;

static void *return_tid(void *arg) {
    *(uint32_t *)arg = get_tid();
    return NULL;
}

static void *bystander_main(void *arg) {
    (void)arg;
    atomic_store(&bystander_tid, get_tid());
    CHECK(sem_post(&bystander_go) == 0);
    sem_wait_retrying(&bystander_done);
    return NULL;
}

/* Whether thread `tid` of this process sleeps (state S in /proc/self/task/<tid>/stat). */
static int thread_sleeping(uint32_t tid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%" PRIu32 "/stat", tid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p != NULL && p[1] == ' ' && p[2] == 'S';
}

/* A server of `g` that goes idle until a worker is queued, takes it, and returns it. */
static struct umcg_task *wait_for_worker(struct group *g, struct umcg_task *s) {
    struct umcg_task *w = NULL;
    while (idle_workers_take_all(g, &w, 1) == 0)
        server_idle(g, s, NULL);
    return w;
}

/* ---- 1. the errno matrix -------------------------------------------------------------- */

static _Atomic int failures, rows;

static void check_row(const char *id, long r, int e, long want_r, int want_e, int line) {
    atomic_fetch_add(&rows, 1);
    int ok = want_r == -1 ? (r == -1 && e == want_e) : r == want_r;
    if (!ok) {
        fprintf(stderr,
                "line %d: %s: want %ld (errno %d: %s), got %ld (errno %d: %s)\n", line, id,
                want_r, want_r == -1 ? want_e : 0, want_r == -1 ? strerror(want_e) : "-", r, e,
                strerror(e));
        atomic_fetch_add(&failures, 1);
    }
}

/* errno is sampled right after the call. */
#define ROW(id, call, want_r, want_e)                                                      \
    do {                                                                                   \
        errno = 0;                                                                         \
        long r_ = (call);                                                                  \
        int e_ = errno;                                                                    \
        check_row((id), r_, e_, (want_r), (want_e), __LINE__);                            \
    } while (0)
#define ERR(id, call, e) ROW(id, call, -1, e)
#define OK(id, call) ROW(id, call, 0, 0)

static void init_server_task(struct umcg_task *t) {
    memset(t, 0, sizeof *t);
    t->state = UMCG_TASK_RUNNING;
    t->api_version = UMCG_API_VERSION;
}

static struct group dummy; /* lists of worker tasks whose registration must fail early */

static void *unregistered_rows(void *arg) {
    (void)arg;
    static struct umcg_task s, w;
    const uint32_t R = UMCG_CTL_REGISTER, W = UMCG_CTL_WORKER, U = UMCG_CTL_UNREGISTER;
#define FRESH() (init_server_task(&s), task_init_worker(&w, &dummy))
    FRESH();
    /* §2.3 unregister 1; §2.4 step 1. */
    ERR("ctl.unregister.not_registered", umcg_ctl(U, NULL), EINVAL);
    ERR("ctl.unregister.not_registered_with_self", umcg_ctl(U, &s), EINVAL);
    ERR("wait.unregistered", umcg_wait(0, 0), EINVAL);
    ERR("wait.unregistered.wake_only", umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), EINVAL);
    ERR("wait.unregistered.nonsense", umcg_wait(0xffffffffu, UINT64_MAX), EINVAL);
    /* §2.3 register 1: flags. */
    ERR("ctl.flags.zero", umcg_ctl(0, &s), EINVAL);
    ERR("ctl.flags.worker_without_register", umcg_ctl(W, &w), EINVAL);
    ERR("ctl.flags.unknown_bit_0x40", umcg_ctl(R | 0x40, &s), EINVAL);
    ERR("ctl.flags.unknown_bit_31", umcg_ctl(R | 0x80000000u, &s), EINVAL);
    ERR("ctl.flags.worker_and_unknown_bit", umcg_ctl(R | W | 0x100, &w), EINVAL);
    ERR("ctl.flags.register_and_unregister", umcg_ctl(R | U, &s), EINVAL);
    ERR("ctl.flags.all_bits", umcg_ctl(0xffffffffu, &s), EINVAL);
    ERR("ctl.flags.checked_before_self", umcg_ctl(R | 0x40, NULL), EINVAL);
    /* Extension: the task of another (registered) thread. */
    ERR("ctl.register.task_of_another_thread", umcg_ctl(R, &other_server.task), EINVAL);
    /* §2.3 register 3: self. */
    ERR("ctl.self.null", umcg_ctl(R, NULL), EFAULT);
    ERR("ctl.self.null_worker", umcg_ctl(R | W, NULL), EFAULT);
    ERR("ctl.self.misaligned_1", umcg_ctl(R, at(addr_of(&s) + 1)), EFAULT);
    ERR("ctl.self.misaligned_8", umcg_ctl(R, at(addr_of(&s) + 8)), EFAULT);
    ERR("ctl.self.misaligned_32_worker", umcg_ctl(R | W, at(addr_of(&w) + 32)), EFAULT);
    ERR("ctl.self.unmapped", umcg_ctl(R, at(hole)), EFAULT);
    ERR("ctl.self.unmapped_worker", umcg_ctl(R | W, at(hole)), EFAULT);
    ERR("ctl.self.prot_none", umcg_ctl(R, at(prot_none)), EFAULT);
    ERR("ctl.self.noncanonical", umcg_ctl(R, at(NONCANONICAL)), EFAULT);
    ERR("ctl.self.kernel_half", umcg_ctl(R | W, at(KERNEL_HALF)), EFAULT);
    ERR("ctl.self.low_address", umcg_ctl(R, at(0x40)), EFAULT);
    ERR("ctl.self.last_64_bytes", umcg_ctl(R, at(~(uint64_t)63)), EFAULT);
    /* §2.3 register 4: api_version (returns +1). */
    s.api_version = 0;
    ROW("ctl.api_version.0", umcg_ctl(R, &s), 1, 0);
    s.api_version = 2;
    ROW("ctl.api_version.2", umcg_ctl(R, &s), 1, 0);
    w.api_version = 0xffffffffu;
    ROW("ctl.api_version.max_worker", umcg_ctl(R | W, &w), 1, 0);
    s.next_tid = 5;
    ROW("ctl.api_version.checked_before_tids", umcg_ctl(R, &s), 1, 0);
    FRESH();
    /* §2.3 register 5. */
    s.server_tid = get_tid();
    ERR("ctl.server_tid.server", umcg_ctl(R, &s), EINVAL);
    w.server_tid = atomic_load(&other_server.tid);
    ERR("ctl.server_tid.worker", umcg_ctl(R | W, &w), EINVAL);
    FRESH();
    s.next_tid = 1;
    ERR("ctl.next_tid.server", umcg_ctl(R, &s), EINVAL);
    w.next_tid = 0xffffffffu;
    ERR("ctl.next_tid.worker", umcg_ctl(R | W, &w), EINVAL);
    FRESH();
    /* §2.3 register 6-7: the whole state word. */
    static const struct {
        const char *id;
        uint32_t flags, state;
    } states[] = {
        {"ctl.state.server_idle", UMCG_CTL_REGISTER, UMCG_TASK_IDLE},
        {"ctl.state.server_blocked", UMCG_CTL_REGISTER, UMCG_TASK_BLOCKED},
        {"ctl.state.server_none", UMCG_CTL_REGISTER, UMCG_TASK_NONE},
        {"ctl.state.server_running_locked", UMCG_CTL_REGISTER, UMCG_TASK_RUNNING | UMCG_TF_LOCKED},
        {"ctl.state.server_running_reserved_bit", UMCG_CTL_REGISTER, UMCG_TASK_RUNNING | 1u << 16},
        {"ctl.state.server_running_user_bit", UMCG_CTL_REGISTER, UMCG_TASK_RUNNING | 1u << 24},
        {"ctl.state.server_nonsense", UMCG_CTL_REGISTER, 0xdeadbeefu},
        {"ctl.state.worker_running", UMCG_CTL_REGISTER | UMCG_CTL_WORKER, UMCG_TASK_RUNNING},
        {"ctl.state.worker_blocked", UMCG_CTL_REGISTER | UMCG_CTL_WORKER, UMCG_TASK_BLOCKED},
        {"ctl.state.worker_none", UMCG_CTL_REGISTER | UMCG_CTL_WORKER, UMCG_TASK_NONE},
        {"ctl.state.worker_idle_locked", UMCG_CTL_REGISTER | UMCG_CTL_WORKER,
         UMCG_TASK_IDLE | UMCG_TF_LOCKED},
        {"ctl.state.worker_idle_preempted", UMCG_CTL_REGISTER | UMCG_CTL_WORKER,
         UMCG_TASK_IDLE | UMCG_TF_PREEMPTED},
        {"ctl.state.worker_idle_user_bit", UMCG_CTL_REGISTER | UMCG_CTL_WORKER,
         UMCG_TASK_IDLE | 1u << 24},
        {"ctl.state.worker_idle_reserved_bit", UMCG_CTL_REGISTER | UMCG_CTL_WORKER,
         UMCG_TASK_IDLE | 1u << 20},
    };
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
        FRESH();
        struct umcg_task *t = (states[i].flags & W) ? &w : &s;
        t->state = states[i].state;
        ERR(states[i].id, umcg_ctl(states[i].flags, t), EINVAL);
    }
    /* Hooks are no-ops for a thread that is not a worker, and keep errno. */
    errno = 4242;
    umcg_block_begin();
    umcg_block_end();
    int kept = errno;
    ROW("hooks.unregistered_noop", kept, 4242, 0);
    /* Extension: umcg_kick. */
    ERR("kick.exited_thread", umcg_kick(0, dead_tid), ESRCH);
    ERR("kick.unregistered_thread", umcg_kick(0, atomic_load(&bystander_tid)), ESRCH);
    ERR("kick.flags", umcg_kick(0x80000000u, atomic_load(&other_server.tid)), EINVAL);
    /* Extension: umcg_set_idle_wakeup with a nonsense mode. */
    ERR("set_idle_wakeup.nonsense", umcg_set_idle_wakeup(0xffffffffu), EINVAL);
    ERR("set_idle_wakeup.zero", umcg_set_idle_wakeup(0), EINVAL);
#undef FRESH
    CHECK(umcg_ctl(U, NULL) == -1); /* nothing above left the thread registered */
    return NULL;
}

static void on_sigusr1(int sig) { (void)sig; }

static _Atomic int interrupt_done;
static _Atomic uint32_t interrupt_tid;

static void *signaller(void *arg) {
    (void)arg;
    while (!atomic_load(&interrupt_done)) {
        syscall(SYS_tgkill, getpid(), atomic_load(&interrupt_tid), SIGUSR1);
        usleep(5000);
    }
    return NULL;
}

static void *server_rows(void *arg) {
    (void)arg;
    static struct umcg_task s, w, other;
    const uint32_t R = UMCG_CTL_REGISTER, W = UMCG_CTL_WORKER, U = UMCG_CTL_UNREGISTER;
    const uint32_t WO = UMCG_WAIT_WAKE_ONLY;
    init_server_task(&s);
    init_server_task(&other);
    task_init_worker(&w, &dummy);
    CHECK(umcg_ctl(R, &s) == 0);
    uint32_t me = get_tid(), server = atomic_load(&other_server.tid);
    STORE32(&s.server_tid, me);
    uint32_t bystander = atomic_load(&bystander_tid);
    /* §2.3 unregister 1 and register 1-2, registered. */
    ERR("ctl.unregister.with_self", umcg_ctl(U, &s), EINVAL);
    ERR("ctl.unregister.with_worker_flag", umcg_ctl(U | W, NULL), EINVAL);
    ERR("ctl.unregister.with_register_flag", umcg_ctl(U | R, NULL), EINVAL);
    ERR("ctl.unregister.all_flag_bits", umcg_ctl(0xffffffffu, NULL), EINVAL);
    ERR("ctl.register_again.same_task", umcg_ctl(R, &s), EINVAL);
    ERR("ctl.register_again.other_task", umcg_ctl(R, &other), EINVAL);
    ERR("ctl.register_again.as_worker", umcg_ctl(R | W, &w), EINVAL);
    ERR("ctl.register_again.null_self", umcg_ctl(R, NULL), EINVAL);
    ERR("ctl.register_again.unmapped_self", umcg_ctl(R, at(hole)), EINVAL);
    /* Still registered: a wake of ourselves works. */
    STORE32(&s.next_tid, me);
    OK("still_registered", umcg_wait(WO, 0));
    /* §2.4 step 3: WAKE_ONLY. */
    STORE32(&s.next_tid, 0);
    ERR("wait.wake_only.next_tid_0", umcg_wait(WO, 0), EINVAL);
    ERR("wait.wake_only.next_tid_0_and_unknown_flag", umcg_wait(WO | 0x100, 0), EINVAL);
    STORE32(&s.next_tid, me);
    ERR("wait.wake_only.timeout", umcg_wait(WO, 1), EINVAL);
    ERR("wait.wake_only.unknown_flag_4", umcg_wait(WO | 4, 0), EINVAL);
    ERR("wait.wake_only.unknown_flag_31", umcg_wait(WO | UMCG_WAIT_WF_CURRENT_CPU | 0x80000000u, 0),
        EINVAL);
    ERR("wait.wake_only.all_flags", umcg_wait(0xffffffffu, 0), EINVAL);
    STORE32(&s.next_tid, NO_SUCH_TID);
    ERR("wait.wake_only.no_such_thread", umcg_wait(WO, 0), ESRCH);
    STORE32(&s.next_tid, dead_tid);
    ERR("wait.wake_only.exited_thread", umcg_wait(WO, 0), ESRCH);
    STORE32(&s.next_tid, bystander);
    ERR("wait.wake_only.unregistered_thread", umcg_wait(WO, 0), ESRCH);
    STORE32(&s.next_tid, me);
    OK("wait.wake_only.self", umcg_wait(WO, 0));
    STORE32(&s.next_tid, server);
    OK("wait.wake_only.a_server", umcg_wait(WO, 0));
    OK("wait.wake_only.wf_current_cpu", umcg_wait(WO | UMCG_WAIT_WF_CURRENT_CPU, 0));
    /* §2.4 step 4: without WAKE_ONLY the flags are not validated. */
    STORE32(&s.next_tid, 0);
    OK("wait.flags.not_validated", umcg_wait(~WO, 0));
    OK("wait.flags.wf_current_cpu_alone", umcg_wait(UMCG_WAIT_WF_CURRENT_CPU, 0));
    /* §2.4 step 5: context switch (RUNNING: the wait returns at once). */
    STORE32(&s.next_tid, NO_SUCH_TID);
    ERR("wait.switch.no_such_thread", umcg_wait(0, 0), ESRCH);
    STORE32(&s.next_tid, dead_tid);
    ERR("wait.switch.exited_thread", umcg_wait(0, 0), ESRCH);
    STORE32(&s.next_tid, bystander);
    OK("wait.switch.unregistered_thread", umcg_wait(0, 0));
    STORE32(&s.next_tid, me);
    OK("wait.switch.self", umcg_wait(0, 0));
    STORE32(&s.next_tid, server);
    OK("wait.switch.a_server", umcg_wait(0, 0));
    /* Extension (v0.4+ timeouts; v0.3: EOPNOTSUPP): still IDLE afterwards. */
    STORE32(&s.next_tid, 0);
    STORE32(&s.state, UMCG_TASK_IDLE);
    ERR("wait.idle.timeout_in_the_past", umcg_wait(0, 1), ETIMEDOUT);
    STORE32(&s.next_tid, me);
    ERR("wait.idle.switch_to_self_times_out", umcg_wait(0, realtime_ns() + 1000000u), ETIMEDOUT);
    ROW("wait.idle.still_idle", LOAD32(&s.state), UMCG_TASK_IDLE, 0);
    /* §2.4 step 6: a signal handler (no SA_RESTART) ends the wait with EINTR, still IDLE. */
    STORE32(&s.next_tid, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigusr1;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    atomic_store(&interrupt_tid, me);
    pthread_t sig;
    CHECK(pthread_create(&sig, NULL, signaller, NULL) == 0);
    ERR("wait.idle.signal", umcg_wait(0, realtime_ns() + 20000000000u), EINTR);
    atomic_store(&interrupt_done, 1);
    CHECK(pthread_join(sig, NULL) == 0);
    ROW("wait.idle.signal_keeps_idle", LOAD32(&s.state), UMCG_TASK_IDLE, 0);
    STORE32(&s.state, UMCG_TASK_RUNNING);
    /* Hooks: no-ops for a server. Extension: umcg_kick of a server. */
    umcg_block_begin();
    umcg_block_end();
    ROW("hooks.server_noop", LOAD32(&s.state), UMCG_TASK_RUNNING, 0);
    ERR("kick.a_server", umcg_kick(0, me), EINVAL);
    /* §2.3 unregister 1: twice. */
    OK("ctl.unregister.first", umcg_ctl(U, NULL));
    ERR("ctl.unregister.twice", umcg_ctl(U, NULL), EINVAL);
    ERR("wait.after_unregister", umcg_wait(0, 0), EINVAL);
    return NULL;
}

/* Worker rows: a server runs the worker, which runs the rows and then exits. */
static struct group wg;
static struct umcg_task ws, ww; /* the server's and the worker's tasks */
static _Atomic uint32_t ws_tid, ww_tid;
static _Atomic int ww_left;

static void *worker_rows_server(void *arg) {
    (void)arg;
    uint32_t tid = server_register(&wg, &ws);
    atomic_store(&ws_tid, tid);
    struct umcg_task *w = wait_for_worker(&wg, &ws);
    CHECK(w == &ww);
    /* The worker runs every row, then exits (IDLE|LOCKED). */
    CHECK(server_run(&ws, tid, w, atomic_load(&ww_tid)) == (UMCG_TASK_IDLE | UMCG_TF_LOCKED));
    while (!atomic_load(&ww_left)) /* see worker_exit() */
        usleep(100);
    CHECK(umcg_ctl(UMCG_CTL_UNREGISTER, NULL) == 0);
    return NULL;
}

static void *worker_rows(void *arg) {
    (void)arg;
    static struct umcg_task other;
    const uint32_t R = UMCG_CTL_REGISTER, W = UMCG_CTL_WORKER, U = UMCG_CTL_UNREGISTER;
    const uint32_t WO = UMCG_WAIT_WAKE_ONLY;
    init_server_task(&other);
    uint32_t me = get_tid();
    atomic_store(&ww_tid, me);
    task_init_worker(&ww, &wg);
    CHECK(umcg_ctl(R | W, &ww) == 0);
    uint32_t server = LOAD32(&ww.server_tid);
    uint32_t bystander = atomic_load(&bystander_tid);
    ERR("ctl.register_again.worker_as_worker", umcg_ctl(R | W, &ww), EINVAL);
    ERR("ctl.register_again.worker_as_server", umcg_ctl(R, &other), EINVAL);
    ERR("ctl.register_again.worker_null_self", umcg_ctl(R | W, NULL), EINVAL);
    ERR("ctl.unregister.worker_with_self", umcg_ctl(U, &ww), EINVAL);
    ERR("ctl.unregister.worker_with_worker_flag", umcg_ctl(U | W, NULL), EINVAL);
    ERR("wait.wake_only.worker_next_tid_0", umcg_wait(WO, 0), EINVAL);
    STORE32(&ww.next_tid, NO_SUCH_TID);
    ERR("wait.wake_only.worker_no_such_thread", umcg_wait(WO, 0), ESRCH);
    STORE32(&ww.next_tid, dead_tid);
    ERR("wait.wake_only.worker_exited_thread", umcg_wait(WO, 0), ESRCH);
    STORE32(&ww.next_tid, bystander);
    ERR("wait.wake_only.worker_unregistered_thread", umcg_wait(WO, 0), ESRCH);
    STORE32(&ww.next_tid, server);
    OK("wait.wake_only.worker_to_its_server", umcg_wait(WO, 0));
    STORE32(&ww.next_tid, NO_SUCH_TID);
    ERR("wait.switch.worker_no_such_thread", umcg_wait(0, 0), ESRCH);
    STORE32(&ww.next_tid, dead_tid);
    ERR("wait.switch.worker_exited_thread", umcg_wait(0, 0), ESRCH);
    STORE32(&ww.next_tid, 0);
    STORE32(&ww.server_tid, dead_tid);
    ERR("wait.switch.worker_server_tid_exited", umcg_wait(0, 0), ESRCH);
    STORE32(&ww.server_tid, NO_SUCH_TID);
    ERR("wait.switch.worker_server_tid_no_such_thread", umcg_wait(0, 0), ESRCH);
    /* Extension ("A server that leaves"): woken as a plain thread, then no server to wait on. */
    STORE32(&ww.server_tid, bystander);
    ERR("wait.switch.worker_server_tid_unregistered", umcg_wait(0, 0), ESRCH);
    STORE32(&ww.server_tid, server);
    STORE32(&ww.next_tid, bystander);
    OK("wait.switch.worker_unregistered_thread", umcg_wait(0, 0));
    STORE32(&ww.next_tid, me);
    OK("wait.switch.worker_self", umcg_wait(0, 0));
    STORE32(&ww.next_tid, 0);
    ERR("kick.flags_worker", umcg_kick(1, me), EINVAL);
    ROW("worker.still_running", LOAD32(&ww.state), UMCG_TASK_RUNNING, 0);
    worker_exit(&ww, &ws);
    atomic_store(&ww_left, 1);
    ERR("ctl.unregister.worker_twice", umcg_ctl(U, NULL), EINVAL);
    ERR("wait.after_unregister_worker", umcg_wait(0, 0), EINVAL);
    return NULL;
}

static void run_on_thread(void *(*f)(void *)) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, f, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
}

/* ---- 2. corrupted lists (run in a child process each) ------------------------------------ */

struct scene {
    struct group g;
    struct parked s[2];        /* registered servers: valid nodes */
    struct umcg_task stray;    /* valid memory, never registered */
    _Atomic uint64_t own_head; /* a spare idle-worker head word */
};

static struct scene sc;
static struct umcg_task cw; /* the worker whose wake hook reads the lists */

#define DEL NODE_DELETED
static uint64_t H(void) { return idle_servers_head_addr(&sc.g); }
static uint64_t HW(void) { return addr_of(&sc.g.idle_workers); }
static uint64_t S(int i) { return node_of(&sc.s[i].task); }
static void set_link(int i, uint64_t v) { STORE64(&sc.s[i].task.idle_servers_ptr, v); }

/* Each case corrupts and writes the text of the violation it expects (the emulator's
 * message, as Rust formats it: "{:?}" of an address is decimal, "{:#x}" is 0x-hex). */
typedef void (*corrupt_fn)(char *want, size_t n);

static void c_cycle(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, S(0));
    set_link(0, S(1) | DEL);
    set_link(1, S(0) | DEL);
    snprintf(want, n, "idle-server list is corrupt: Cycle(%" PRIu64 ")", S(0));
}
static void c_self_loop(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, S(0));
    set_link(0, S(0) | DEL);
    snprintf(want, n, "idle-server list is corrupt: Cycle(%" PRIu64 ")", S(0));
}
static void c_cycle_behind(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, S(0));
    set_link(0, S(1) | DEL);
    set_link(1, S(1) | DEL);
    snprintf(want, n, "idle-server list is corrupt: Cycle(%" PRIu64 ")", S(1));
}
static void c_head_garbage(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, GARBAGE);
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", GARBAGE);
}
static void c_head_unmapped(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, hole + 16);
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", hole + 16);
}
static void c_head_prot_none(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, prot_none + 16);
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", prot_none + 16);
}
static void c_head_itself(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, H());
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", H());
}
static void c_head_unregistered(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, node_of(&sc.stray));
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", node_of(&sc.stray));
}
static void c_head_workers_node(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, node_of(&cw));
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", node_of(&cw));
}
static void c_head_tagged(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, S(0) | DEL);
    snprintf(want, n, "idle-server list is corrupt: TaggedHead(%" PRIu64 ")", S(0) | DEL);
}
static void c_link_garbage(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, S(0));
    set_link(0, GARBAGE | DEL);
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", GARBAGE);
}
static void c_link_unmapped(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, S(0));
    set_link(0, (hole + 16) | DEL);
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", hole + 16);
}
static void c_link_unregistered(char *want, size_t n) {
    atomic_store(&sc.g.idle_servers, S(0));
    set_link(0, node_of(&sc.stray) | DEL);
    snprintf(want, n, "idle-server list is corrupt: InvalidNode(%" PRIu64 ")", node_of(&sc.stray));
}
static void c_servers_ptr_unmapped(char *want, size_t n) {
    STORE64(&cw.idle_servers_ptr, hole);
    snprintf(want, n, "list head address %#" PRIx64 " is not readable", hole);
}
static void c_servers_ptr_misaligned(char *want, size_t n) {
    STORE64(&cw.idle_servers_ptr, H() + 4);
    snprintf(want, n, "idle-server list is corrupt: MisalignedHead(%" PRIu64 ")", H() + 4);
}
static void c_servers_ptr_tagged(char *want, size_t n) {
    STORE64(&cw.idle_servers_ptr, H() | 1);
    snprintf(want, n, "idle-server list is corrupt: MisalignedHead(%" PRIu64 ")", H() | 1);
}
static void c_servers_ptr_node(char *want, size_t n) {
    STORE64(&cw.idle_servers_ptr, S(0));
    snprintf(want, n, "list head address %#" PRIx64 " is a registered task's list node", S(0));
}
static void c_workers_ptr_null(char *want, size_t n) {
    STORE64(&cw.idle_workers_ptr, 0);
    snprintf(want, n, "idle_workers_ptr is 0");
}
static void c_workers_ptr_unmapped(char *want, size_t n) {
    STORE64(&cw.idle_workers_ptr, hole);
    snprintf(want, n, "list head address %#" PRIx64 " is not readable", hole);
}
static void c_workers_ptr_noncanonical(char *want, size_t n) {
    STORE64(&cw.idle_workers_ptr, NONCANONICAL);
    snprintf(want, n, "list head address %#" PRIx64 " is not readable", NONCANONICAL);
}
static void c_workers_ptr_tagged(char *want, size_t n) {
    STORE64(&cw.idle_workers_ptr, HW() | 1);
    snprintf(want, n, "idle-worker list head is corrupt: TaggedHead(%" PRIu64 ")", HW() | 1);
}
static void c_workers_ptr_own_node(char *want, size_t n) {
    uint64_t node = addr_of(&cw.idle_workers_ptr);
    STORE64(&cw.idle_workers_ptr, node);
    snprintf(want, n, "idle-worker list head is corrupt: SelfLink(%" PRIu64 ")", node);
}
static void c_workers_ptr_server_node(char *want, size_t n) {
    STORE64(&cw.idle_workers_ptr, S(1));
    snprintf(want, n, "list head address %#" PRIx64 " is a registered task's list node", S(1));
}
static void c_head_word_misaligned(char *want, size_t n) {
    atomic_store(&sc.own_head, 0x1003);
    STORE64(&cw.idle_workers_ptr, addr_of(&sc.own_head));
    snprintf(want, n,
             "idle-worker list head is corrupt: CorruptHeadValue { head: %" PRIu64
             ", value: 4099 }",
             addr_of(&sc.own_head));
}

static void c_head_word_tagged(char *want, size_t n) {
    uint64_t v = addr_of(&cw.idle_workers_ptr) | 1;
    atomic_store(&sc.own_head, v);
    STORE64(&cw.idle_workers_ptr, addr_of(&sc.own_head));
    snprintf(want, n,
             "idle-worker list head is corrupt: CorruptHeadValue { head: %" PRIu64
             ", value: %" PRIu64 " }",
             addr_of(&sc.own_head), v);
}
static void c_head_word_is_the_worker(char *want, size_t n) {
    atomic_store(&sc.own_head, addr_of(&cw.idle_workers_ptr));
    STORE64(&cw.idle_workers_ptr, addr_of(&sc.own_head));
    snprintf(want, n, "idle-worker list head is corrupt: AlreadyAtHead");
}
static const struct {
    const char *id;
    corrupt_fn corrupt;
} CASES[] = {
    {"servers.cycle_of_two_deleted_nodes", c_cycle},
    {"servers.deleted_node_linked_to_itself", c_self_loop},
    {"servers.cycle_behind_a_deleted_node", c_cycle_behind},
    {"servers.head_garbage", c_head_garbage},
    {"servers.head_unmapped_node", c_head_unmapped},
    {"servers.head_prot_none_node", c_head_prot_none},
    {"servers.head_points_at_itself", c_head_itself},
    {"servers.head_unregistered_task", c_head_unregistered},
    {"servers.head_a_workers_node", c_head_workers_node},
    {"servers.head_tagged", c_head_tagged},
    {"servers.link_garbage", c_link_garbage},
    {"servers.link_unmapped_node", c_link_unmapped},
    {"servers.link_unregistered_task", c_link_unregistered},
    {"worker.idle_servers_ptr_unmapped", c_servers_ptr_unmapped},
    {"worker.idle_servers_ptr_misaligned", c_servers_ptr_misaligned},
    {"worker.idle_servers_ptr_tagged", c_servers_ptr_tagged},
    {"worker.idle_servers_ptr_a_servers_node", c_servers_ptr_node},
    {"worker.idle_workers_ptr_null", c_workers_ptr_null},
    {"worker.idle_workers_ptr_unmapped", c_workers_ptr_unmapped},
    {"worker.idle_workers_ptr_noncanonical", c_workers_ptr_noncanonical},
    {"worker.idle_workers_ptr_tagged", c_workers_ptr_tagged},
    {"worker.idle_workers_ptr_own_node", c_workers_ptr_own_node},
    {"worker.idle_workers_ptr_a_servers_node", c_workers_ptr_server_node},
    {"workers.head_word_misaligned", c_head_word_misaligned},
    {"workers.head_word_tagged", c_head_word_tagged},
    {"workers.head_word_is_the_worker", c_head_word_is_the_worker},
};
#define NCASES (sizeof CASES / sizeof CASES[0])
static const char *const PATHS[] = {"register", "unblock", "wait"};

/* The child's side: the scene, then one case through one path. Must not return. */
static corrupt_fn child_corrupt;
static _Atomic int corrupted;
static struct umcg_task cs; /* the server that runs the worker (unblock, wait) */
static _Atomic uint32_t cw_tid;

static void announce_and_corrupt(void) {
    char want[256];
    child_corrupt(want, sizeof want);
    fprintf(stderr, "expecting: %s\n", want);
    fflush(stderr);
}

static void *child_worker(void *arg) {
    int wait_path = *(int *)arg;
    atomic_store(&cw_tid, get_tid());
    CHECK(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &cw) == 0);
    if (!wait_path) {
        umcg_block_begin();
        while (!atomic_load(&corrupted))
            usleep(100);
        umcg_block_end(); /* must abort */
    } else {
        worker_yield(&cw, &cs); /* the WAKE_ONLY runs the wake hook, which must abort */
    }
    fprintf(stderr, "the worker returned instead of aborting\n");
    exit(3);
}

static int child(const char *id, const char *path) {
    struct rlimit no_core = {0, 0};
    CHECK(setrlimit(RLIMIT_CORE, &no_core) == 0);
    alarm(20);
    select_idle_wakeup();
    map_bad_pages();
    child_corrupt = NULL;
    for (size_t i = 0; i < NCASES; i++)
        if (strcmp(CASES[i].id, id) == 0)
            child_corrupt = CASES[i].corrupt;
    CHECK(child_corrupt != NULL);
    for (int i = 0; i < 2; i++)
        park(&sc.s[i], H());
    init_server_task(&sc.stray);
    task_init_worker(&cw, &sc.g);
    if (strcmp(path, "register") == 0) {
        announce_and_corrupt();
        umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &cw); /* must abort */
        fprintf(stderr, "umcg_ctl returned instead of aborting\n");
        return 3;
    }
    int wait_path = strcmp(path, "wait") == 0;
    CHECK(wait_path || strcmp(path, "unblock") == 0);
    uint32_t tid = server_register(&sc.g, &cs);
    pthread_t wt;
    CHECK(pthread_create(&wt, NULL, child_worker, &wait_path) == 0);
    struct umcg_task *w = wait_for_worker(&sc.g, &cs);
    CHECK(w == &cw);
    uint32_t st = server_run(&cs, tid, w, atomic_load(&cw_tid));
    if (!wait_path) {
        CHECK(st == UMCG_TASK_BLOCKED);
        announce_and_corrupt();
        atomic_store(&corrupted, 1);
    } else {
        CHECK((st & UMCG_TF_STATE_MASK) == UMCG_TASK_IDLE);
        wait_unlocked(w);
        while (!thread_sleeping(atomic_load(&cw_tid)))
            sched_yield();
        announce_and_corrupt();
        STORE32(&cs.next_tid, atomic_load(&cw_tid));
        CHECK(umcg_wait(UMCG_WAIT_WAKE_ONLY, 0) == 0);
    }
    pthread_join(wt, NULL); /* the worker aborts the process */
    fprintf(stderr, "the worker thread ended instead of aborting\n");
    return 3;
}

/* The parent's side: run "self CASE PATH", check that it died of SIGABRT naming the
 * violation it announced. */
static int expect_abort(const char *self, const char *id, const char *path) {
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execl(self, self, id, path, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char err[8192];
    size_t len = 0;
    ssize_t r;
    while ((r = read(fds[0], err + len, sizeof err - 1 - len)) != 0) {
        if (r < 0) {
            CHECK(errno == EINTR);
            continue;
        }
        len += (size_t)r;
        if (len == sizeof err - 1)
            break;
    }
    err[len] = 0;
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) != pid)
        CHECK(errno == EINTR);
    const char *exp = strstr(err, "expecting: ");
    char want[256] = "";
    if (exp != NULL) {
        exp += strlen("expecting: ");
        size_t n = strcspn(exp, "\n");
        if (n >= sizeof want)
            n = sizeof want - 1;
        memcpy(want, exp, n);
        want[n] = 0;
    }
    const char *v = strstr(err, "contract violation");
    int ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && want[0] != 0 && v != NULL &&
             strstr(v, want) != NULL;
    if (!ok) {
        fprintf(stderr, "%s via %s: want SIGABRT naming \"%s\"; status %#x; stderr:\n%s\n", id,
                path, want, status, err);
        atomic_fetch_add(&failures, 1);
    }
    return ok;
}

int main(int argc, char **argv) {
    if (argc == 3)
        return child(argv[1], argv[2]);
    watchdog(50); /* below tests/c_abi.rs's own 60 s bound */
    const char *mode = select_idle_wakeup();
    map_bad_pages();
    /* Fixtures: an exited thread, a live thread that is no UMCG task, a parked server. */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, return_tid, &dead_tid) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(sem_init(&bystander_go, 0, 0) == 0 && sem_init(&bystander_done, 0, 0) == 0);
    pthread_t by;
    CHECK(pthread_create(&by, NULL, bystander_main, NULL) == 0);
    sem_wait_retrying(&bystander_go);
    park(&other_server, 0);

    /* 1. The errno matrix. */
    run_on_thread(unregistered_rows);
    run_on_thread(server_rows);
    pthread_t wst, wwt;
    CHECK(pthread_create(&wst, NULL, worker_rows_server, NULL) == 0);
    while (atomic_load(&ws_tid) == 0)
        usleep(100);
    CHECK(pthread_create(&wwt, NULL, worker_rows, NULL) == 0);
    CHECK(pthread_join(wwt, NULL) == 0);
    CHECK(pthread_join(wst, NULL) == 0);
    int errno_rows = atomic_load(&rows), errno_failures = atomic_load(&failures);

    /* 2. Corrupted lists: every case through every path, each in a child that must abort. */
    int aborted = 0;
    for (size_t i = 0; i < NCASES; i++)
        for (size_t p = 0; p < sizeof PATHS / sizeof PATHS[0]; p++)
            aborted += expect_abort("/proc/self/exe", CASES[i].id, PATHS[p]);

    unpark(&other_server);
    CHECK(sem_post(&bystander_done) == 0);
    CHECK(pthread_join(by, NULL) == 0);
    if (atomic_load(&failures)) {
        fprintf(stderr, "bad_input (%s): %d failure(s) (%d of %d errno rows)\n", mode,
                atomic_load(&failures), errno_failures, errno_rows);
        return 1;
    }
    printf("bad_input (%s): %d errno rows as specified; %d corrupted-list runs aborted naming "
           "the violation\n",
           mode, errno_rows, aborted);
    return 0;
}
