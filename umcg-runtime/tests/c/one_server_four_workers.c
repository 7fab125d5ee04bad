/*
 * one_server_four_workers.c - one server thread runs four worker threads. Each worker loops
 * ROUNDS times: block (a usleep bracketed by the block hooks), yield to the server, and ask
 * for a swap (a yield marked as such); when the server answers with a partner, the worker
 * swaps to it directly (spec §2.6 "W1 swaps to W2"). Then it exits.
 *
 * Checks: every worker finishes every round; the server sees every block, yield and swap
 * request (told apart by what the worker wrote before giving up the CPU: a quick unblock
 * can make a blocked worker IDLE again before the server looks); every partner handed out
 * is swapped to, and there are swaps (deterministically: the first request comes while
 * all four workers live, and the server holds a request until a partner is free); and at
 * no time do two workers run user code (a shared count, incremented after each return to
 * user code and decremented before each block, yield or swap, never exceeds 1).
 *
 * Swaps are race-free by construction: the server owns its run queue; it takes a partner
 * out of it (an IDLE worker that is on no list) and hands it to the requester it runs. The
 * requester swaps only to that partner, once the partner's LOCKED bit has cleared; the
 * server learns who ran last from `current`, which the swapping worker updates, and puts
 * the swapped-out worker (IDLE, on no list) back into its queue.
 *
 * Run in both idle-wakeup modes (UMCG_IDLE_WAKEUP=list / eventfd).
 */
#include "umcg_test.h"

#define NWORKERS 4
#define ROUNDS 50

/* What a worker did last before giving up the CPU; written before it does so. */
enum reason { R_NONE, R_BLOCK, R_YIELD, R_SWAP_REQ, R_SWAPPED_OUT, R_EXIT };

struct worker {
    struct umcg_task task; /* first member: 64-byte aligned */
    _Atomic uint32_t tid;
    _Atomic int reason;
    _Atomic(struct worker *) partner; /* handed out by the server, for one swap */
    int rounds;
};

static struct group g;
static struct umcg_task server_task;
static _Atomic uint32_t server_tid;
static struct worker workers[NWORKERS];
static _Atomic(struct worker *) current; /* the worker that runs on the server now */
static _Atomic int running;             /* workers in user code: never more than 1 */
static _Atomic int swaps;
static _Atomic int exits_done; /* workers whose worker_exit() returned */

/* See worker_exit(): wait until every worker has left before a thread that may still be
 * named in a switch exits, or the server unregisters. */
static void wait_all_exited(void) {
    while (atomic_load(&exits_done) < NWORKERS)
        usleep(100);
}

static void enter_user(void) {
    int n = atomic_fetch_add(&running, 1) + 1;
    CHECK(n == 1);
}

static void leave_user(void) {
    int n = atomic_fetch_sub(&running, 1);
    CHECK(n == 1);
}

/* W1 swaps to W2: W1:IDLE|LOCKED first (so that the server, woken by W2, never finds W1
 * still RUNNING), then W2.server_tid and W2:RUNNING, then W1.next_tid = W2, and wait. */
static void swap_to(struct worker *w, struct worker *p) {
    wait_unlocked(&p->task);
    atomic_store(&w->reason, R_SWAPPED_OUT); /* no longer a request */
    STORE32(&w->task.state, UMCG_TASK_IDLE | UMCG_TF_LOCKED);
    atomic_store(&current, p);
    STORE32(&p->task.server_tid, atomic_load(&server_tid));
    uint32_t idle = UMCG_TASK_IDLE;
    CHECK(CAS32(&p->task.state, &idle, UMCG_TASK_RUNNING)); /* IDLE=>RUNNING */
    STORE32(&w->task.next_tid, atomic_load(&p->tid));
    CHECK(wait_retrying_eintr(0) == 0);
    STORE32(&w->task.next_tid, 0);
    CHECK(state_of(&w->task) == UMCG_TASK_RUNNING);
    atomic_fetch_add(&swaps, 1);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    atomic_store(&w->tid, get_tid());
    task_init_worker(&w->task, &g);
    /* Returns once the server runs us. */
    CHECK(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &w->task) == 0);
    enter_user();
    for (w->rounds = 0; w->rounds < ROUNDS; w->rounds++) {
        CHECK(state_of(&w->task) == UMCG_TASK_RUNNING);
        /* Block. */
        atomic_store(&w->reason, R_BLOCK);
        leave_user();
        umcg_block_begin();
        usleep(100);
        umcg_block_end();
        enter_user();
        CHECK(state_of(&w->task) == UMCG_TASK_RUNNING);
        /* Yield. */
        atomic_store(&w->reason, R_YIELD);
        leave_user();
        worker_yield(&w->task, &server_task);
        enter_user();
        /* Ask for a swap; swap if the server answered with a partner (it does not when we
         * are resumed as another worker's partner, or are the last worker left). */
        atomic_store(&w->reason, R_SWAP_REQ);
        leave_user();
        worker_yield(&w->task, &server_task);
        enter_user();
        struct worker *p = atomic_exchange(&w->partner, NULL);
        if (p != NULL) {
            leave_user();
            swap_to(w, p);
            enter_user();
        }
    }
    atomic_store(&w->reason, R_EXIT);
    leave_user();
    worker_exit(&w->task, &server_task);
    atomic_fetch_add(&exits_done, 1);
    wait_all_exited();
    return NULL;
}

/* The server's run queue, touched only by the server thread. */
static struct worker *runq[NWORKERS];
static int runq_len;

static void runq_push(struct worker *w) {
    CHECK(runq_len < NWORKERS);
    for (int i = 0; i < runq_len; i++)
        CHECK(runq[i] != w);
    runq[runq_len++] = w;
}

/* Remove and return entry i (FIFO order is kept). */
static struct worker *runq_take(int i) {
    CHECK(i < runq_len);
    struct worker *w = runq[i];
    memmove(&runq[i], &runq[i + 1], (size_t)(runq_len - i - 1) * sizeof runq[0]);
    runq_len--;
    return w;
}

static void drain(void) {
    struct umcg_task *taken[NWORKERS];
    int n = idle_workers_take_all(&g, taken, NWORKERS);
    for (int i = 0; i < n; i++)
        runq_push((struct worker *)taken[i]);
}

static int blocks_seen, blocks_seen_blocked, yields_seen, swap_reqs_seen, partners_given;
static int idles, popped;

static void *server_main(void *arg) {
    (void)arg;
    atomic_store(&server_tid, server_register(&g, &server_task));
    uint32_t stid = atomic_load(&server_tid);
    int done = 0;
    while (done < NWORKERS) {
        drain();
        /* A swap request goes first, with a partner; if no partner is free but another
         * worker lives (then it is blocked and comes back), wait for it. */
        int req = -1;
        for (int i = 0; i < runq_len && req < 0; i++)
            if (atomic_load(&runq[i]->reason) == R_SWAP_REQ)
                req = i;
        int hold = req >= 0 && runq_len == 1 && NWORKERS - done > 1;
        if (runq_len == 0 || hold) {
            popped += server_idle(&g, &server_task, NULL);
            idles++;
            continue;
        }
        struct worker *w = runq_take(req >= 0 ? req : 0);
        if (req >= 0 && runq_len > 0) {
            atomic_store(&w->partner, runq_take(0));
            partners_given++;
        }
        atomic_store(&current, w);
        server_run(&server_task, stid, &w->task, atomic_load(&w->tid));
        struct worker *last = atomic_load(&current);
        CHECK(atomic_load(&w->partner) == NULL); /* a partner is always swapped to */
        if (last != w)
            runq_push(w); /* swapped out: IDLE, on no list */
        uint32_t st = LOAD32(&last->task.state);
        switch (atomic_load(&last->reason)) {
        case R_BLOCK:
            /* BLOCKED, or IDLE already and queued by the kernel: it comes back from there. */
            CHECK((st & UMCG_TF_STATE_MASK) == UMCG_TASK_BLOCKED ||
                  (st & UMCG_TF_STATE_MASK) == UMCG_TASK_IDLE);
            blocks_seen++;
            blocks_seen_blocked += (st & UMCG_TF_STATE_MASK) == UMCG_TASK_BLOCKED;
            break;
        case R_YIELD:
            CHECK((st & UMCG_TF_STATE_MASK) == UMCG_TASK_IDLE);
            yields_seen++;
            runq_push(last);
            break;
        case R_SWAP_REQ:
            CHECK((st & UMCG_TF_STATE_MASK) == UMCG_TASK_IDLE);
            swap_reqs_seen++;
            runq_push(last);
            break;
        case R_EXIT:
            CHECK(st == (UMCG_TASK_IDLE | UMCG_TF_LOCKED));
            CHECK(last->rounds == ROUNDS);
            done++;
            break;
        default:
            CHECK(!"worker gave up the CPU without a reason");
        }
    }
    CHECK(runq_len == 0 && atomic_load(&g.idle_workers) == 0);
    wait_all_exited();
    CHECK(umcg_ctl(UMCG_CTL_UNREGISTER, NULL) == 0);
    return NULL;
}

int main(void) {
    watchdog(30);
    const char *mode = select_idle_wakeup();
    pthread_t server, threads[NWORKERS];
    CHECK(pthread_create(&server, NULL, server_main, NULL) == 0);
    for (int i = 0; i < NWORKERS; i++)
        CHECK(pthread_create(&threads[i], NULL, worker_main, &workers[i]) == 0);
    for (int i = 0; i < NWORKERS; i++)
        CHECK(pthread_join(threads[i], NULL) == 0);
    CHECK(pthread_join(server, NULL) == 0);

    printf("one_server_four_workers (%s): %d blocks (%d seen BLOCKED), %d yields, %d swap "
           "requests, %d swaps, %d idle waits (%d popped)\n",
           mode, blocks_seen, blocks_seen_blocked, yields_seen, swap_reqs_seen,
           atomic_load(&swaps), idles, popped);
    for (int i = 0; i < NWORKERS; i++)
        CHECK(workers[i].rounds == ROUNDS);
    CHECK(blocks_seen == NWORKERS * ROUNDS);
    CHECK(yields_seen == NWORKERS * ROUNDS);
    CHECK(swap_reqs_seen == NWORKERS * ROUNDS);
    CHECK(atomic_load(&swaps) == partners_given);
    CHECK(partners_given > 0);
    CHECK(atomic_load(&running) == 0);
    return 0;
}
