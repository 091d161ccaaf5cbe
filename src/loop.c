/*
 * loop.c: the event loop. A backend that waits for io (backend_epoll.c),
 * an eventfd that wakes the loop for tasks posted from other threads, an
 * intrusive queue of those tasks, a heap of timers, and the order of an
 * iteration's phases.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "backend.h"
#include "loop_int.h"
#include "znet/log.h"

static void zn__loop_wake_cb(zn_io_t *io, unsigned events, void *ud);


static unsigned long
zn__self(void)
{
    return (unsigned long)pthread_self();
}


void
zn_loop_opts_default(zn_loop_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->max_posted = ZN__MAX_POSTED_DEFAULT;
}


int
zn_loop_new(zn_loop_t **out)
{
    return zn_loop_new_opts(out, NULL);
}


int
zn_loop_new_opts(zn_loop_t **out, const zn_loop_opts_t *opts)
{
    zn_loop_t *loop;
    int rc;

    loop = zn__calloc(1, sizeof(*loop));
    if (loop == NULL)
        return ZN_ENOMEM;
    loop->sigfd = -1;
    loop->max_posted = opts != NULL && opts->max_posted > 0
                           ? opts->max_posted
                           : ZN__MAX_POSTED_DEFAULT;
    loop->be = &zn__backend_epoll;
    if ((rc = loop->be->open(loop)) != 0)
        goto free_loop;
    loop->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->wakefd < 0) {
        rc = -errno;
        goto close_backend;
    }
    pthread_mutex_init(&loop->task_mu, NULL);
    atomic_init(&loop->owner, zn__self());
    snprintf(loop->name, sizeof(loop->name), "loop");
    loop->now = zn_now_ms();
    zn_io_init(loop, &loop->wake_io, loop->wakefd, zn__loop_wake_cb, loop);
    rc = zn_io_start(&loop->wake_io, ZN_EV_READABLE);
    if (rc != 0)
        goto close_wakefd;
    *out = loop;
    return 0;

close_wakefd:
    pthread_mutex_destroy(&loop->task_mu);
    zn__close_fd(loop->wakefd);
close_backend:
    loop->be->close(loop);
free_loop:
    zn__free(loop);
    return rc;
}


static void zn__loop_run_tasks(zn_loop_t *loop);


/*
 * Tasks still queued own resources (a connection reference, a copy of
 * data): they run here so that those are released, even though the loop
 * will not run again.
 */
void
zn_loop_free(zn_loop_t *loop)
{
    if (loop == NULL)
        return;
    atomic_store(&loop->owner, zn__self());
    while (atomic_load(&loop->npending) > 0)
        zn__loop_run_tasks(loop);
    zn_io_stop(&loop->wake_io);
    if (loop->sigfd >= 0) {
        zn_io_stop(&loop->sig_io);
        zn__close_fd(loop->sigfd);
    }
    zn__close_fd(loop->wakefd);
    loop->be->close(loop);
    pthread_mutex_destroy(&loop->task_mu);
    zn__free(loop->scratch);
    if (loop->spare_out != NULL) {
        zn_buf_free(loop->spare_out);
        zn__free(loop->spare_out);
    }
    zn__free(loop);
}


bool
zn_loop_in_thread(const zn_loop_t *loop)
{
    return atomic_load_explicit(&((zn_loop_t *)loop)->owner,
                                memory_order_relaxed) == zn__self();
}


uint64_t
zn_loop_now(const zn_loop_t *loop)
{
    return loop->now;
}


void
zn_loop_update_time(zn_loop_t *loop)
{
    loop->now = zn_now_ms();
}


const char *
zn_loop_name(const zn_loop_t *loop)
{
    return loop->name;
}


void
zn_loop_set_name(zn_loop_t *loop, const char *name)
{
    snprintf(loop->name, sizeof(loop->name), "%s", name);
}


char *
zn__loop_scratch(zn_loop_t *loop)
{
    if (loop->scratch == NULL)
        loop->scratch = zn__malloc(ZN__SCRATCH_SIZE);
    return loop->scratch;
}


void
zn_loop_stats(const zn_loop_t *loop, zn_loop_stats_t *st)
{
    st->iterations = zn__counter_get(&loop->st.iterations);
    st->io_events = zn__counter_get(&loop->st.io_events);
    st->timers_fired = zn__counter_get(&loop->st.timers_fired);
    st->tasks_posted = zn__counter_get(&loop->st.tasks_posted);
    st->tasks_run = zn__counter_get(&loop->st.tasks_run);
    st->wakeups = zn__counter_get(&loop->st.wakeups);
    st->timers_active = zn__counter_get(&loop->st.timers_active);
    st->io_active = zn__counter_get(&loop->st.io_active);
}

/* ---- posted tasks ------------------------------------------------------ */


/* The next link of the last node queued: a node's next is not NULL
 * while it is queued, which is how a second post of it is refused. */
#define ZN__TASK_END ((zn_task_node_t *)&zn__task_end)
static const char zn__task_end;


/*
 * The queue, not the eventfd counter, carries the work: a post links the
 * node under the mutex and writes the eventfd only if no wake-up is
 * already due, so a burst of posts costs one write and one read. A post
 * from the loop's own thread never writes: the loop checks `npending`
 * before it sleeps. The node is its owner's: nothing is allocated, so a
 * post cannot fail for want of memory.
 */
int
zn__loop_post_node(zn_loop_t *loop, zn_task_node_t *n)
{
    static const uint64_t one = 1;
    bool wake = false;

    pthread_mutex_lock(&loop->task_mu);
    if (__atomic_load_n(&n->next, __ATOMIC_ACQUIRE) != NULL) {
        pthread_mutex_unlock(&loop->task_mu);
        return ZN_EBUSY;
    }
    __atomic_store_n(&n->next, ZN__TASK_END, __ATOMIC_RELAXED);
    if (loop->tail != NULL)
        __atomic_store_n(&loop->tail->next, n, __ATOMIC_RELAXED);
    else
        loop->head = n;
    loop->tail = n;
    atomic_fetch_add(&loop->npending, 1);
    zn__counter_add(&loop->st.tasks_posted, 1);
    if (!loop->wake_pending && !zn_loop_in_thread(loop)) {
        loop->wake_pending = true;
        wake = true;
    }
    pthread_mutex_unlock(&loop->task_mu);
    if (wake) {
        /* EAGAIN means the counter is saturated: the loop is awake. */
        if (write(loop->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            ZN_LOG_RL(ZN_LOG_ERROR, 1, "%s: eventfd write: %s", loop->name,
                      strerror(errno));
        atomic_fetch_add_explicit(&loop->st.wakeups, 1, memory_order_relaxed);
    }
    return 0;
}


static void
zn__task_run(zn_task_node_t *n)
{
    zn_task_t *t = zn__container_of(n, zn_task_t, node);

    t->cb(t->ud);
}


void
zn_task_init(zn_task_t *t, zn_task_cb cb, void *ud)
{
    t->node.next = NULL;
    t->node.fn = zn__task_run;
    t->cb = cb;
    t->ud = ud;
}


int
zn_loop_post_task(zn_loop_t *loop, zn_task_t *t)
{
    return zn__loop_post_node(loop, &t->node);
}


/* zn_loop_post()'s task: the node and the call in one allocation. */
typedef struct {
    zn_task_t t;
    zn_loop_t *loop;
    zn_task_cb cb;
    void *ud;
} zn__posted_t;


static void
zn__posted_run(void *ud)
{
    zn__posted_t *p = ud;
    zn_task_cb cb = p->cb;
    void *arg = p->ud;

    atomic_fetch_sub(&p->loop->nalloc, 1);
    zn__free(p);
    cb(arg);
}


/* Bounded: a thread that posts faster than the loop runs is refused
 * rather than let the queue, and the memory behind it, grow. */
int
zn_loop_post(zn_loop_t *loop, zn_task_cb cb, void *ud)
{
    zn__posted_t *p;

    if (atomic_fetch_add(&loop->nalloc, 1) >= loop->max_posted) {
        atomic_fetch_sub(&loop->nalloc, 1);
        return ZN_ENOBUFS;
    }
    if ((p = zn__malloc(sizeof(*p))) == NULL) {
        atomic_fetch_sub(&loop->nalloc, 1);
        return ZN_ENOMEM;
    }
    p->loop = loop;
    p->cb = cb;
    p->ud = ud;
    zn_task_init(&p->t, zn__posted_run, p);
    return zn_loop_post_task(loop, &p->t);
}


/*
 * Runs one batch: the tasks posted before it started. Tasks posted while
 * the batch runs wait for the next iteration, so a task that posts itself
 * cannot starve io. A task is marked unqueued before it runs, so that it
 * may post itself again (or be freed by its callback).
 */
static void
zn__loop_run_tasks(zn_loop_t *loop)
{
    zn_task_node_t *t, *next;
    size_t n = 0;

    pthread_mutex_lock(&loop->task_mu);
    t = loop->head;
    loop->head = loop->tail = NULL;
    loop->wake_pending = false;
    pthread_mutex_unlock(&loop->task_mu);
    for (; t != NULL && t != ZN__TASK_END; t = next, n++) {
        next = __atomic_load_n(&t->next, __ATOMIC_RELAXED);
        __atomic_store_n(&t->next, NULL, __ATOMIC_RELEASE);
        atomic_fetch_sub(&loop->npending, 1);
        t->fn(t);
    }
    zn__counter_add(&loop->st.tasks_run, n);
}


static void
zn__loop_wake_cb(zn_io_t *io, unsigned events, void *ud)
{
    uint64_t n;

    (void)io;
    (void)events;
    (void)ud;
    if (read(((zn_loop_t *)ud)->wakefd, &n, sizeof(n)) < 0 &&
        errno != EAGAIN)
        ZN_LOG_RL(ZN_LOG_ERROR, 1, "eventfd read: %s", strerror(errno));
}


void
zn_loop_stop(zn_loop_t *loop)
{
    static const uint64_t one = 1;

    atomic_store(&loop->stop, 1);
    if (!zn_loop_in_thread(loop) &&
        write(loop->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        ZN_LOG_RL(ZN_LOG_ERROR, 1, "eventfd write: %s", strerror(errno));
}

/* ---- io watchers ------------------------------------------------------- */


void
zn_io_init(zn_loop_t *loop, zn_io_t *io, int fd, zn_io_cb cb, void *ud)
{
    io->loop = loop;
    io->fd = fd;
    io->cb = cb;
    io->ud = ud;
    io->events = 0;
    io->armed = 0;
    io->slot = -1;
}


int
zn_io_start(zn_io_t *io, unsigned events)
{
    zn_loop_t *loop = io->loop;
    bool was_active = io->slot >= 0;
    int rc;

    events &= ZN_EV_READABLE | ZN_EV_WRITABLE;
    if (events == 0) {
        zn_io_stop(io);
        return 0;
    }
    if (was_active && io->armed == events)
        return 0;
    if ((rc = loop->be->watch(loop, io, events)) != 0)
        return rc;
    if (!was_active)
        zn__counter_add(&loop->st.io_active, 1);
    io->events = io->armed = events;
    return 0;
}


/* The backend also forgets the events for it that the current batch has
 * not dispatched yet (see backend.h). */
void
zn_io_stop(zn_io_t *io)
{
    zn_loop_t *loop = io->loop;

    if (io->slot < 0)
        return;
    loop->be->unwatch(loop, io);
    io->events = io->armed = 0;
    atomic_store_explicit(&loop->st.io_active,
                          zn__counter_get(&loop->st.io_active) - 1,
                          memory_order_relaxed);
}



/* ---- timers ------------------------------------------------------------ */


void
zn_timer_init(zn_loop_t *loop, zn_timer_t *t, zn_timer_cb cb, void *ud)
{
    memset(t, 0, sizeof(*t));
    t->loop = loop;
    t->cb = cb;
    t->ud = ud;
}


void
zn_timer_start(zn_timer_t *t, uint64_t timeout_ms, uint64_t repeat_ms)
{
    zn_loop_t *loop = t->loop;

    zn_timer_stop(t);
    /* Outside an iteration the cached time may be old (a loop made, then
     * set up for a while before it runs): count from the real now. */
    if (!loop->in_iteration)
        loop->now = zn_now_ms();
    t->due = loop->now + timeout_ms;
    if (t->due < loop->now)
        t->due = UINT64_MAX;
    t->repeat = repeat_ms;
    t->order = loop->timer_order++;
    zn__heap_insert(&loop->timers, t);
    t->active = 1;
    zn__counter_add(&loop->st.timers_active, 1);
}


void
zn_timer_stop(zn_timer_t *t)
{
    zn_loop_t *loop = t->loop;

    if (!t->active)
        return;
    zn__heap_remove(&loop->timers, t);
    t->active = 0;
    atomic_store_explicit(&loop->st.timers_active,
                          zn__counter_get(&loop->st.timers_active) - 1,
                          memory_order_relaxed);
}


/*
 * Runs the timers due now. A timer started (or re-armed) during this phase
 * waits for the next one, so a callback that restarts its timer with a
 * zero time-out cannot keep the loop here. A repeating timer is re-armed
 * before its callback, which may then stop or restart it; after the
 * callback the loop does not touch the timer again.
 */
static int
zn__loop_run_timers(zn_loop_t *loop)
{
    uint64_t phase = loop->timer_order;
    zn_timer_t *t;
    int ran = 0;

    while ((t = loop->timers.min) != NULL && t->due <= loop->now &&
           t->order < phase) {
        zn_timer_stop(t);
        if (t->repeat != 0)
            zn_timer_start(t, t->repeat, t->repeat);
        t->cb(t, t->ud);
        ran++;
    }
    zn__counter_add(&loop->st.timers_fired, (uint64_t)ran);
    return ran;
}


/* How long epoll_wait may sleep: until the next timer (rounded up, so the
 * loop never wakes early and spins), 0 if work is waiting. */
static int
zn__loop_timeout(zn_loop_t *loop, int max_ms)
{
    const zn_timer_t *t = loop->timers.min;
    uint64_t wait;

    if (max_ms == 0 || atomic_load(&loop->npending) > 0 ||
        atomic_load(&loop->stop))
        return 0;
    if (t == NULL)
        return max_ms;
    if (t->due <= loop->now)
        return 0;
    wait = t->due - loop->now;
    if (wait > INT_MAX)
        wait = INT_MAX;
    if (max_ms > 0 && (uint64_t)max_ms < wait)
        return max_ms;
    return (int)wait;
}

/* ---- running ----------------------------------------------------------- */


/*
 * One iteration, as a list of phases: timers that are due, a wait for io
 * bounded by the next timer and the io callbacks (the backend's poll),
 * the posted tasks.
 */
int
zn_loop_run_once(zn_loop_t *loop, int timeout_ms)
{
    int n, ran;

    /* Outside zn_loop_run() the loop belongs to whoever runs it. */
    if (!atomic_load(&loop->running_flag))
        atomic_store(&loop->owner, zn__self());
    loop->in_iteration = true;
    loop->now = zn_now_ms();
    ran = zn__loop_run_timers(loop);
    n = loop->be->poll(loop, zn__loop_timeout(loop, ran > 0 ? 0 : timeout_ms));
    zn__counter_add(&loop->st.iterations, 1);
    if (n < 0) {
        loop->in_iteration = false;
        return n;
    }
    zn__counter_add(&loop->st.io_events, (uint64_t)n);
    ran += n + (int)atomic_load(&loop->npending);
    if (atomic_load(&loop->npending) > 0)
        zn__loop_run_tasks(loop);
    loop->in_iteration = false;
    return ran;
}


int
zn_loop_run(zn_loop_t *loop)
{
    int expected = 0, rc = 0;

    if (!atomic_compare_exchange_strong(&loop->running_flag, &expected, 1))
        return ZN_EBUSY;
    atomic_store(&loop->owner, zn__self());
    while (!atomic_load(&loop->stop)) {
        rc = zn_loop_run_once(loop, -1);
        if (rc < 0)
            break;
        rc = 0;
    }
    if (atomic_load(&loop->npending) > 0)
        zn__loop_run_tasks(loop);
    atomic_store(&loop->stop, 0);
    atomic_store(&loop->running_flag, 0);
    return rc;
}

/* ---- signals ----------------------------------------------------------- */


static void
zn__loop_signal_cb(zn_io_t *io, unsigned events, void *ud)
{
    zn_loop_t *loop = ud;
    struct signalfd_siginfo si;

    (void)io;
    (void)events;
    while (read(loop->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        if (loop->sig_cb != NULL)
            loop->sig_cb(loop, (int)si.ssi_signo, loop->sig_ud);
}


int
zn_loop_handle_signals(zn_loop_t *loop, const int *sigs, zn_signal_cb cb,
                       void *ud)
{
    static const int defaults[] = {SIGINT, SIGTERM, 0};
    sigset_t set;
    int fd, rc;

    sigemptyset(&set);
    for (sigs = sigs ? sigs : defaults; *sigs != 0; sigs++) {
        sigaddset(&set, *sigs);
        /* An ignored signal is discarded even while blocked, and a
         * non-interactive shell starts background jobs with SIGINT
         * ignored: take the signal back, or the signalfd never sees it. */
        signal(*sigs, SIG_DFL);
    }
    if ((rc = pthread_sigmask(SIG_BLOCK, &set, NULL)) != 0)
        return -rc;
    fd = signalfd(loop->sigfd, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    loop->sig_cb = cb;
    loop->sig_ud = ud;
    if (loop->sigfd < 0) {
        loop->sigfd = fd;
        zn_io_init(loop, &loop->sig_io, fd, zn__loop_signal_cb, loop);
        if ((rc = zn_io_start(&loop->sig_io, ZN_EV_READABLE)) != 0) {
            zn__close_fd(fd);
            loop->sigfd = -1;
            return rc;
        }
    }
    return 0;
}
