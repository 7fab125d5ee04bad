/*
 * umcg_test.h - shared code of the C ABI tests (the programs in tests/c/, run by tests/c_abi.rs).
 *
 * Checks and a watchdog, atomics on the plain fields of struct umcg_task, and the user-space
 * half of UMCG v0.3 written in C as a v0.3 program would write it (spec §2.6, §2.7): the
 * idle-server list (push, remove, garbage collection, reclaim), the idle-worker list
 * (take-all), and the canonical sequences "S runs W", "server idles", "W yields" and
 * "W exits".
 *
 * Include this file first: it defines _GNU_SOURCE for syscall(2).
 */
#ifndef UMCG_TEST_H
#define UMCG_TEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "umcg.h"

/* ---- checks and watchdog --------------------------------------------------------------- */

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            int e_ = errno;                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s (errno %d: %s)\n", __FILE__, __LINE__, \
                    #cond, e_, strerror(e_));                                              \
            fflush(stdout);                                                                \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* A lost wakeup must fail the test, not hang it: SIGALRM's default action ends the process. */
static inline void watchdog(unsigned seconds) { alarm(seconds); }

static inline uint32_t get_tid(void) { return (uint32_t)syscall(SYS_gettid); }

static inline uint64_t realtime_ns(void) {
    struct timespec ts;
    CHECK(clock_gettime(CLOCK_REALTIME, &ts) == 0);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- atomics on struct umcg_task -------------------------------------------------------- */

/*
 * The header declares the fields as plain uint32_t/uint64_t, as the kernel's did; the
 * kernel and user space access them atomically. C11 atomics need _Atomic objects: on this
 * ABI an _Atomic uintN_t has the size and alignment of uintN_t, so the fields are accessed
 * through casts (sequentially consistent unless stated).
 */
_Static_assert(sizeof(_Atomic uint32_t) == 4 && _Alignof(_Atomic uint32_t) == 4, "u32");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && _Alignof(_Atomic uint64_t) == 8, "u64");
#define A32(p) ((_Atomic uint32_t *)(p))
#define A64(p) ((_Atomic uint64_t *)(p))
#define LOAD32(p) atomic_load(A32(p))
#define STORE32(p, v) atomic_store(A32(p), (v))
#define CAS32(p, expected, v) atomic_compare_exchange_strong(A32(p), (expected), (v))
#define LOAD64(p) atomic_load(A64(p))
#define STORE64(p, v) atomic_store(A64(p), (v))
#define CAS64(p, expected, v) atomic_compare_exchange_strong(A64(p), (expected), (v))

static inline uint64_t addr_of(const volatile void *p) { return (uint64_t)(uintptr_t)p; }
static inline uint32_t state_of(struct umcg_task *t) {
    return LOAD32(&t->state) & UMCG_TF_STATE_MASK;
}

/* ---- a scheduling group: the two head words every task points at ------------------------ */

struct group {
    _Atomic uint64_t idle_servers; /* head of the idle-server stack (§2.7.1) */
    _Atomic uint64_t idle_workers; /* head of the idle-worker stack (§2.7.2) */
    _Atomic int gc_lock;           /* one idle-server collector at a time */
};

/* Bit 0 of an idle-server link word: the node holding it is deleted (popped or removed). */
#define NODE_DELETED ((uint64_t)1)

static inline uint64_t idle_servers_head_addr(struct group *g) { return addr_of(&g->idle_servers); }

/*
 * A node that is off the idle-server list holds the head's own address (the "reset"
 * value): a popper that still holds the node's address then knows that the node left the
 * list and restarts from the head (umcg-abi/src/idle_servers.rs explains why).
 */
static inline void idle_server_prepare(struct group *g, struct umcg_task *s) {
    STORE64(&s->idle_servers_ptr, idle_servers_head_addr(g));
}

/*
 * Push server s (it is going idle). Returns 1 once pushed, 0 if a popper that still held
 * the node's address from an earlier push marked it while it was being pushed: the server
 * is claimed, and that popper makes it RUNNING.
 */
static inline int idle_server_push(struct group *g, struct umcg_task *s) {
    uint64_t node = addr_of(&s->idle_servers_ptr);
    uint64_t link = LOAD64(&s->idle_servers_ptr);
    CHECK(link == idle_servers_head_addr(g)); /* the node was reset */
    uint64_t first = atomic_load(&g->idle_servers);
    for (;;) {
        CHECK((first & NODE_DELETED) == 0);
        /* The link is written with a CAS from its previous value, not a store: once it
         * holds a plausible address a stale popper may mark it, and a store would erase
         * that mark (the node would be popped twice). */
        if (!CAS64(&s->idle_servers_ptr, &link, first)) {
            CHECK(link & NODE_DELETED);
            return 0;
        }
        link = first;
        if (atomic_compare_exchange_strong(&g->idle_servers, &first, node))
            return 1;
    }
}

/* Mark s's own node deleted. 1: removed by us; 0: already deleted (popped); -1: not on the list. */
static inline int idle_server_remove(struct group *g, struct umcg_task *s) {
    uint64_t link = LOAD64(&s->idle_servers_ptr);
    for (;;) {
        if (link == idle_servers_head_addr(g))
            return -1;
        if (link & NODE_DELETED)
            return 0;
        if (CAS64(&s->idle_servers_ptr, &link, link | NODE_DELETED))
            return 1;
    }
}

/*
 * Unlink every deleted node reachable from the head (the reference GC of §2.7.1). The
 * caller holds gc_lock. A deleted node's link is frozen, so it can be unlinked by a CAS of
 * its predecessor's link; if the predecessor was popped meanwhile, or a CAS fails, start over.
 */
static inline void idle_servers_collect_locked(struct group *g) {
    uint64_t head_addr = idle_servers_head_addr(g);
    long steps = 0;
    _Atomic uint64_t *prev;
    int prev_is_head;
restart:
    prev = &g->idle_servers;
    prev_is_head = 1;
    for (;;) {
        CHECK(++steps < 1000000);
        uint64_t cur = atomic_load(prev);
        if (cur & NODE_DELETED) {
            CHECK(!prev_is_head); /* the head word itself is never tagged */
            goto restart;
        }
        if (cur == 0)
            return;
        CHECK((cur & 7) == 0);
        _Atomic uint64_t *link = (_Atomic uint64_t *)(uintptr_t)cur;
        uint64_t nxt = atomic_load(link);
        if ((nxt & NODE_DELETED) == 0) {
            CHECK(nxt != head_addr); /* a node still linked is never reset */
            prev = link;
            prev_is_head = 0;
            continue;
        }
        uint64_t expected = cur;
        if (!atomic_compare_exchange_strong(prev, &expected, nxt & ~NODE_DELETED))
            goto restart;
    }
}

static inline void gc_lock(struct group *g) {
    int unlocked = 0;
    while (!atomic_compare_exchange_weak(&g->gc_lock, &unlocked, 1)) {
        unlocked = 0;
        sched_yield();
    }
}

static inline void gc_unlock(struct group *g) { atomic_store(&g->gc_lock, 0); }

/*
 * Take s's node off the list for good and reset it, so that s can push itself again:
 * delete it (if it is still live), collect (after which no link reaches it), then reset.
 */
static inline void idle_server_reclaim(struct group *g, struct umcg_task *s) {
    uint64_t link = LOAD64(&s->idle_servers_ptr);
    if (link == idle_servers_head_addr(g))
        return;
    if ((link & NODE_DELETED) == 0)
        CHECK(idle_server_remove(g, s) >= 0);
    gc_lock(g);
    idle_servers_collect_locked(g);
    STORE64(&s->idle_servers_ptr, idle_servers_head_addr(g));
    gc_unlock(g);
}

/* Live (unmarked) nodes on the idle-server list; for checks while the list is quiet. */
static inline int idle_servers_count_live(struct group *g) {
    int n = 0, steps = 0;
    uint64_t cur = atomic_load(&g->idle_servers);
    while (cur != 0 && cur != idle_servers_head_addr(g)) {
        CHECK(++steps < 1000);
        uint64_t link = atomic_load((_Atomic uint64_t *)(uintptr_t)cur);
        if ((link & NODE_DELETED) == 0)
            n++;
        cur = link & ~NODE_DELETED;
    }
    return n;
}

/*
 * Take every worker the kernel queued (XCHG the head with 0), resetting each worker's
 * idle_workers_ptr to the head address before anything else (§2.7.2: otherwise the kernel
 * would later push onto the stale link). Stores up to max tasks in out; returns how many.
 */
static inline int idle_workers_take_all(struct group *g, struct umcg_task **out, int max) {
    uint64_t head_addr = addr_of(&g->idle_workers);
    uint64_t cur = atomic_exchange(&g->idle_workers, 0);
    int n = 0;
    while (cur != 0) {
        CHECK(n < max);
        CHECK((cur & 7) == 0 && cur != head_addr);
        uint64_t next = atomic_load((_Atomic uint64_t *)(uintptr_t)cur);
        atomic_store((_Atomic uint64_t *)(uintptr_t)cur, head_addr);
        out[n++] = (struct umcg_task *)(uintptr_t)(cur - UMCG_IDLE_WORKERS_NODE_OFFSET);
        cur = next;
    }
    return n;
}

/* ---- tasks ------------------------------------------------------------------------------ */

static inline void task_init_worker(struct umcg_task *t, struct group *g) {
    memset(t, 0, sizeof *t);
    t->state = UMCG_TASK_IDLE;
    t->api_version = UMCG_API_VERSION;
    t->idle_servers_ptr = addr_of(&g->idle_servers);
    t->idle_workers_ptr = addr_of(&g->idle_workers);
}

/* Register the calling thread as a server of g; returns its TID. */
static inline uint32_t server_register(struct group *g, struct umcg_task *s) {
    memset(s, 0, sizeof *s);
    s->state = UMCG_TASK_RUNNING;
    s->api_version = UMCG_API_VERSION;
    CHECK(umcg_ctl(UMCG_CTL_REGISTER, s) == 0);
    uint32_t tid = get_tid();
    STORE32(&s->server_tid, tid); /* written by user space after registering (§2.1) */
    idle_server_prepare(g, s);
    return tid;
}

static inline long wait_retrying_eintr(uint32_t flags) {
    long r;
    do
        r = umcg_wait(flags, 0);
    while (r == -1 && errno == EINTR);
    return r;
}

/* A worker that still has LOCKED is on its way into umcg_wait: it must not be run yet. */
static inline void wait_unlocked(struct umcg_task *w) {
    while (LOAD32(&w->state) & UMCG_TF_LOCKED)
        sched_yield();
}

/*
 * "Server S runs worker W" (§2.6): S:IDLE, then W.server_tid and W:RUNNING, then
 * S.next_tid = W, and wait. Returns W's state word once S is RUNNING again.
 */
static inline uint32_t server_run(struct umcg_task *s, uint32_t stid, struct umcg_task *w, uint32_t wtid) {
    wait_unlocked(w);
    STORE32(&s->state, UMCG_TASK_IDLE);
    STORE32(&w->server_tid, stid);
    uint32_t idle = UMCG_TASK_IDLE;
    CHECK(CAS32(&w->state, &idle, UMCG_TASK_RUNNING)); /* IDLE=>RUNNING */
    STORE32(&s->next_tid, wtid);
    long r = wait_retrying_eintr(0);
    STORE32(&s->next_tid, 0);
    CHECK(r == 0);
    CHECK(LOAD32(&s->state) == UMCG_TASK_RUNNING);
    return LOAD32(&w->state);
}

/*
 * "Server idles" (§2.6, §2.7.1 ordering): S:IDLE, push itself, fence, re-check the
 * idle-worker list, then wait until RUNNING; afterwards reclaim the node. *in_wait (if not
 * NULL) is 1 while the server sleeps past its re-check. Returns 1 if the server was popped
 * (its node marked by a popper, which made it RUNNING), 0 if it left the list by itself.
 */
static inline int server_idle(struct group *g, struct umcg_task *s, _Atomic int *in_wait) {
    int popped;
    STORE32(&s->state, UMCG_TASK_IDLE);
    idle_server_push(g, s);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&g->idle_workers) != 0 && idle_server_remove(g, s) == 1) {
        /* Work arrived and nobody claimed us: leave by ourselves. */
        STORE32(&s->state, UMCG_TASK_RUNNING);
        popped = 0;
    } else {
        /* Asleep on the list, or claimed already: the popper makes us RUNNING. */
        if (in_wait)
            atomic_store(in_wait, 1);
        CHECK(wait_retrying_eintr(0) == 0);
        if (in_wait)
            atomic_store(in_wait, 0);
        CHECK(LOAD64(&s->idle_servers_ptr) & NODE_DELETED);
        popped = 1;
    }
    CHECK(LOAD32(&s->state) == UMCG_TASK_RUNNING);
    idle_server_reclaim(g, s);
    return popped;
}

/* Worker side: make its server RUNNING (it is exactly IDLE while its worker runs). */
static inline void set_server_running(struct umcg_task *s) {
    uint32_t idle = UMCG_TASK_IDLE;
    CHECK(CAS32(&s->state, &idle, UMCG_TASK_RUNNING));
}

/* "W yields to its server" (§2.6): W:IDLE|LOCKED, S:RUNNING, next_tid 0, wait. */
static inline void worker_yield(struct umcg_task *w, struct umcg_task *s) {
    STORE32(&w->state, UMCG_TASK_IDLE | UMCG_TF_LOCKED);
    set_server_running(s);
    STORE32(&w->next_tid, 0);
    CHECK(wait_retrying_eintr(0) == 0);
    CHECK(state_of(w) == UMCG_TASK_RUNNING);
}

/*
 * A worker leaves: W:IDLE|LOCKED (never run again), S:RUNNING, wake S, unregister.
 *
 * The server can see S:RUNNING and W's state before the WAKE_ONLY arrives (a stale wake
 * from earlier ends its wait early), so it must not unregister before this returned, or
 * the WAKE_ONLY fails with ESRCH. Likewise a worker that may still be the target of a
 * swap keeps its thread alive after this (a switch to a thread that is gone is ESRCH; to a
 * live thread that is no UMCG task, a harmless wake).
 */
static inline void worker_exit(struct umcg_task *w, struct umcg_task *s) {
    STORE32(&w->state, UMCG_TASK_IDLE | UMCG_TF_LOCKED);
    set_server_running(s);
    STORE32(&w->next_tid, LOAD32(&w->server_tid));
    CHECK(umcg_wait(UMCG_WAIT_WAKE_ONLY, 0) == 0);
    CHECK(umcg_ctl(UMCG_CTL_UNREGISTER, NULL) == 0);
}

/* Choose the idle-wakeup mode named by UMCG_IDLE_WAKEUP (default: list) explicitly. */
static inline const char *select_idle_wakeup(void) {
    const char *m = getenv("UMCG_IDLE_WAKEUP");
    int eventfd = m != NULL && strcmp(m, "eventfd") == 0;
    CHECK(umcg_set_idle_wakeup(eventfd ? UMCG_IDLE_WAKEUP_EVENTFD : UMCG_IDLE_WAKEUP_LIST) == 0);
    return eventfd ? "eventfd" : "list";
}

#endif /* UMCG_TEST_H */
