/*
 * idle_server_popped.c - v0.3 idle-server list semantics (spec §2.5.2 steps 3-6, §2.7.1):
 * a worker blocks while two servers are idle on the tag-bit list; when it unblocks, the
 * kernel queues it and pops exactly one server (marks its node, makes it RUNNING, wakes
 * it), while the other stays on the list, live and IDLE. The popped server runs the
 * worker to completion.
 *
 * Sequence: server A runs the worker once, which then blocks until released; server B
 * starts; both go idle; once both sleep past their re-check of the idle-worker list, the
 * worker is released. At the end the main thread pops the remaining server itself, as the
 * kernel would (mark, IDLE=>RUNNING, wake with WAKE_ONLY), and everything unregisters.
 *
 * Run in both idle-wakeup modes (UMCG_IDLE_WAKEUP=list / eventfd).
 */
#include "umcg_test.h"

struct server {
    struct umcg_task task; /* first member: 64-byte aligned */
    _Atomic uint32_t tid;
    _Atomic int in_wait;     /* sleeping past its re-check */
    _Atomic int woke_popped; /* its node was marked and it was RUNNING when it woke */
    _Atomic int ran_worker;  /* ran the worker to completion */
    int idx;
};

static struct group g;
static struct server servers[2];
static struct umcg_task worker_task;
static _Atomic uint32_t worker_tid;
static _Atomic int a_ran, release_worker, stop, worker_done, worker_left, woken_with_work;

static pthread_mutex_t runq_lock = PTHREAD_MUTEX_INITIALIZER;
static struct umcg_task *runq[1];
static int runq_len;

static struct umcg_task *server_of_tid(uint32_t tid) {
    for (int i = 0; i < 2; i++)
        if (atomic_load(&servers[i].tid) == tid)
            return &servers[i].task;
    CHECK(!"no server with that tid");
    return NULL;
}

static void *worker_main(void *arg) {
    (void)arg;
    atomic_store(&worker_tid, get_tid());
    task_init_worker(&worker_task, &g);
    CHECK(umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &worker_task) == 0);
    /* Block until released; meanwhile both servers go idle. */
    umcg_block_begin();
    while (!atomic_load(&release_worker))
        usleep(100);
    umcg_block_end();
    CHECK(state_of(&worker_task) == UMCG_TASK_RUNNING);
    atomic_store(&worker_done, 1);
    worker_exit(&worker_task, server_of_tid(LOAD32(&worker_task.server_tid)));
    atomic_store(&worker_left, 1);
    return NULL;
}

/* Take queued workers into the run queue; pop one, or NULL. */
static struct umcg_task *take_worker(void) {
    struct umcg_task *w = NULL;
    CHECK(pthread_mutex_lock(&runq_lock) == 0);
    runq_len += idle_workers_take_all(&g, runq + runq_len, 1 - runq_len);
    if (runq_len > 0)
        w = runq[--runq_len];
    CHECK(pthread_mutex_unlock(&runq_lock) == 0);
    return w;
}

/* Go idle until a worker is available (returned) or stop is set (NULL). */
static struct umcg_task *idle_until_work(struct server *s) {
    for (;;) {
        struct umcg_task *w = take_worker();
        if (w != NULL || atomic_load(&stop))
            return w;
        if (server_idle(&g, &s->task, &s->in_wait)) {
            /* Woken by a pop: right now, before the next round, the node is reclaimed;
             * server_idle checked that it was marked and the server RUNNING. */
            if (!atomic_load(&stop))
                atomic_store(&s->woke_popped, 1);
        }
    }
}

static void *server_main(void *arg) {
    struct server *s = arg;
    uint32_t tid = server_register(&g, &s->task);
    atomic_store(&s->tid, tid);
    if (s->idx == 0) {
        /* A: run the worker once; it blocks (and stays blocked until released). */
        struct umcg_task *w = idle_until_work(s);
        CHECK(w == &worker_task);
        uint32_t st = server_run(&s->task, tid, w, atomic_load(&worker_tid));
        CHECK(st == UMCG_TASK_BLOCKED);
        CHECK(LOAD32(&s->task.state) == UMCG_TASK_RUNNING);
        atomic_store(&s->woke_popped, 0); /* the worker's registration may have popped A */
        atomic_store(&a_ran, 1);
    }
    struct umcg_task *w = idle_until_work(s);
    if (w != NULL) {
        atomic_fetch_add(&woken_with_work, 1);
        CHECK(atomic_load(&s->woke_popped));
        CHECK(w == &worker_task);
        CHECK(LOAD32(&w->state) == UMCG_TASK_IDLE);
        uint32_t st = server_run(&s->task, tid, w, atomic_load(&worker_tid));
        CHECK(st == (UMCG_TASK_IDLE | UMCG_TF_LOCKED)); /* it exited */
        CHECK(atomic_load(&worker_done));
        while (!atomic_load(&worker_left)) /* see worker_exit() */
            usleep(100);
        atomic_store(&s->ran_worker, 1);
    } else {
        CHECK(atomic_load(&stop));
    }
    CHECK(umcg_ctl(UMCG_CTL_UNREGISTER, NULL) == 0);
    return NULL;
}

static void spin_until(_Atomic int *flag) {
    while (!atomic_load(flag))
        usleep(100);
}

int main(void) {
    watchdog(30);
    const char *mode = select_idle_wakeup();
    pthread_t st[2], wt;
    for (int i = 0; i < 2; i++)
        servers[i].idx = i;

    CHECK(pthread_create(&st[0], NULL, server_main, &servers[0]) == 0);
    while (atomic_load(&servers[0].tid) == 0)
        usleep(100);
    CHECK(pthread_create(&wt, NULL, worker_main, NULL) == 0);
    spin_until(&a_ran);
    CHECK(state_of(&worker_task) == UMCG_TASK_BLOCKED);
    CHECK(pthread_create(&st[1], NULL, server_main, &servers[1]) == 0);

    /* Both servers asleep on the list, past their re-check; the worker still blocked. */
    spin_until(&servers[0].in_wait);
    spin_until(&servers[1].in_wait);
    CHECK(idle_servers_count_live(&g) == 2);
    CHECK(LOAD32(&servers[0].task.state) == UMCG_TASK_IDLE);
    CHECK(LOAD32(&servers[1].task.state) == UMCG_TASK_IDLE);
    CHECK(state_of(&worker_task) == UMCG_TASK_BLOCKED);

    /* Unblock: exactly one server is popped and runs the worker to completion. */
    atomic_store(&release_worker, 1);
    CHECK(pthread_join(wt, NULL) == 0);
    int x = -1;
    while (x < 0) {
        for (int i = 0; i < 2; i++)
            if (atomic_load(&servers[i].ran_worker))
                x = i;
        usleep(100);
    }
    CHECK(pthread_join(st[x], NULL) == 0);
    struct server *other = &servers[1 - x];
    CHECK(atomic_load(&woken_with_work) == 1);
    CHECK(atomic_load(&servers[x].woke_popped) == 1);
    CHECK(atomic_load(&other->woke_popped) == 0);
    /* The other one never noticed: still asleep, IDLE, its node live on the list. */
    CHECK(atomic_load(&other->in_wait) == 1);
    CHECK(LOAD32(&other->task.state) == UMCG_TASK_IDLE);
    uint64_t link = LOAD64(&other->task.idle_servers_ptr);
    CHECK((link & NODE_DELETED) == 0 && link != idle_servers_head_addr(&g));
    CHECK(idle_servers_count_live(&g) == 1);

    /* Release it as the kernel would: mark its node, IDLE=>RUNNING, wake it (WAKE_ONLY needs
     * a registered caller: the main thread registers as a server for that). */
    atomic_store(&stop, 1);
    static struct umcg_task main_task;
    server_register(&g, &main_task);
    CHECK(CAS64(&other->task.idle_servers_ptr, &link, link | NODE_DELETED));
    uint32_t idle = UMCG_TASK_IDLE;
    CHECK(CAS32(&other->task.state, &idle, UMCG_TASK_RUNNING));
    STORE32(&main_task.next_tid, atomic_load(&other->tid));
    CHECK(umcg_wait(UMCG_WAIT_WAKE_ONLY, 0) == 0);
    STORE32(&main_task.next_tid, 0);
    CHECK(pthread_join(st[1 - x], NULL) == 0);
    CHECK(umcg_ctl(UMCG_CTL_UNREGISTER, NULL) == 0);

    CHECK(atomic_load(&woken_with_work) == 1);
    CHECK(idle_servers_count_live(&g) == 0);
    CHECK(atomic_load(&g.idle_workers) == 0);
    printf("idle_server_popped (%s): server %c popped and ran the worker, server %c stayed idle\n",
           mode, 'A' + x, 'A' + (1 - x));
    return 0;
}
