/*
 * loop.c: the event loop. One epoll instance, an eventfd that wakes the
 * loop for tasks posted from other threads, a heap of timers, and the
 * dispatch of io events with protection against stale events.
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

#include "loop_int.h"
#include "znet/log.h"

static void zn__loop_wake_cb(zn_io_t *io, unsigned events, void *ud);


static unsigned long
zn__self(void)
{
    return (unsigned long)pthread_self();
}


int
zn_loop_new(zn_loop_t **out)
{
    zn_loop_t *loop;
    int rc;

    loop = zn__calloc(1, sizeof(*loop));
    if (loop == NULL)
        return ZN_ENOMEM;
    loop->sigfd = -1;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) {
        rc = -errno;
        goto free_loop;
    }
    loop->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->wakefd < 0) {
        rc = -errno;
        goto close_epoll;
    }
    /* Room for a burst of tasks from the start: posting then allocates
     * nothing, so answers and closes still travel when memory runs out. */
    loop->pending.v = zn__malloc(ZN__TASKS_INITIAL * sizeof(zn__task_t));
    loop->running.v = zn__malloc(ZN__TASKS_INITIAL * sizeof(zn__task_t));
    if (loop->pending.v == NULL || loop->running.v == NULL) {
        rc = ZN_ENOMEM;
        goto free_tasks;
    }
    loop->pending.cap = loop->running.cap = ZN__TASKS_INITIAL;
    pthread_mutex_init(&loop->task_mu, NULL);
    atomic_init(&loop->owner, zn__self());
    snprintf(loop->name, sizeof(loop->name), "loop");
    loop->now = zn_now_ms();
    zn_io_init(loop, &loop->wake_io, loop->wakefd, zn__loop_wake_cb, loop);
    rc = zn_io_start(&loop->wake_io, ZN_READABLE);
    if (rc != 0)
        goto close_wakefd;
    *out = loop;
    return 0;

close_wakefd:
    pthread_mutex_destroy(&loop->task_mu);
    zn__free(loop->ios);
free_tasks:
    zn__free(loop->pending.v);
    zn__free(loop->running.v);
    zn__close_fd(loop->wakefd);
close_epoll:
    zn__close_fd(loop->epfd);
free_loop:
    zn__free(loop);
    return rc;
}


static void zn__loop_run_tasks(zn_loop_t *loop);
static void zn__loop_run_tail(zn_loop_t *loop);


/*
 * Tasks still queued own resources (a connection reference, a copy of
 * data), and so do requests gathered for a worker pool: they run (or are
 * handed on) here so that those are released, even though the loop will
 * not run again.
 */
void
zn_loop_free(zn_loop_t *loop)
{
    if (loop == NULL)
        return;
    atomic_store(&loop->owner, zn__self());
    while (atomic_load(&loop->npending) > 0 || loop->handoff.head != NULL)
        zn__loop_run_tail(loop);
    zn_io_stop(&loop->wake_io);
    if (loop->sigfd >= 0) {
        zn_io_stop(&loop->sig_io);
        zn__close_fd(loop->sigfd);
    }
    zn__close_fd(loop->wakefd);
    zn__close_fd(loop->epfd);
    pthread_mutex_destroy(&loop->task_mu);
    zn__free(loop->pending.v);
    zn__free(loop->running.v);
    zn__free(loop->ios);
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


zn__conn_stats_t *
zn__loop_conn_stats(zn_loop_t *loop)
{
    return &loop->conn_stats;
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


/* The end of an iteration: tasks, then what they and the io phase left
 * for the worker pool. */
static void
zn__loop_run_tail(zn_loop_t *loop)
{
    if (atomic_load(&loop->npending) > 0)
        zn__loop_run_tasks(loop);
    if (loop->handoff.head != NULL)
        loop->handoff.flush(loop);
}


static int
zn__taskvec_push(zn__taskvec_t *tv, zn_task_cb cb, void *ud)
{
    zn__task_t *v;
    size_t cap;

    if (tv->n == tv->cap) {
        cap = tv->cap ? tv->cap * 2 : ZN__TASKS_INITIAL;
        v = zn__realloc(tv->v, cap * sizeof(*v));
        if (v == NULL)
            return ZN_ENOMEM;
        tv->v = v;
        tv->cap = cap;
    }
    tv->v[tv->n].cb = cb;
    tv->v[tv->n].ud = ud;
    tv->n++;
    return 0;
}


/*
 * The queue, not the eventfd counter, carries the work: a post appends
 * under the mutex and writes the eventfd only if no wake-up is already
 * due, so a burst of posts costs one write and one read. A post from the
 * loop's own thread never writes: the loop checks `npending` before it
 * sleeps.
 */
int
zn_loop_post(zn_loop_t *loop, zn_task_cb cb, void *ud)
{
    static const uint64_t one = 1;
    bool wake = false;
    int rc;

    pthread_mutex_lock(&loop->task_mu);
    rc = zn__taskvec_push(&loop->pending, cb, ud);
    if (rc == 0) {
        atomic_fetch_add(&loop->npending, 1);
        zn__counter_add(&loop->st.tasks_posted, 1);
        if (!loop->wake_pending && !zn_loop_in_thread(loop)) {
            loop->wake_pending = true;
            wake = true;
        }
    }
    pthread_mutex_unlock(&loop->task_mu);
    if (wake) {
        /* EAGAIN means the counter is saturated: the loop is awake. */
        if (write(loop->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            ZN_LOG_RL(ZN_LOG_ERROR, 1, "%s: eventfd write: %s", loop->name,
                      strerror(errno));
        atomic_fetch_add_explicit(&loop->st.wakeups, 1, memory_order_relaxed);
    }
    return rc;
}


/*
 * Runs one batch: the tasks posted before the swap. Tasks posted while the
 * batch runs wait for the next iteration, so a task that posts itself
 * cannot starve io.
 */
static void
zn__loop_run_tasks(zn_loop_t *loop)
{
    zn__taskvec_t tv;
    size_t i;

    pthread_mutex_lock(&loop->task_mu);
    tv = loop->pending;
    loop->pending = loop->running;
    loop->pending.n = 0;
    loop->running = tv;
    loop->wake_pending = false;
    atomic_fetch_sub(&loop->npending, tv.n);
    pthread_mutex_unlock(&loop->task_mu);
    for (i = 0; i < tv.n; i++)
        tv.v[i].cb(tv.v[i].ud);
    zn__counter_add(&loop->st.tasks_run, tv.n);
    loop->running.n = 0;
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


static int
zn__loop_grow_ios(zn_loop_t *loop, int fd)
{
    size_t n = loop->nios ? loop->nios : 64;
    zn_io_t **v;

    while (n <= (size_t)fd)
        n *= 2;
    v = zn__realloc(loop->ios, n * sizeof(*v));
    if (v == NULL)
        return ZN_ENOMEM;
    memset(v + loop->nios, 0, (n - loop->nios) * sizeof(*v));
    loop->ios = v;
    loop->nios = n;
    return 0;
}


static uint32_t
zn__epoll_bits(unsigned events)
{
    return ((events & ZN_READABLE) ? EPOLLIN | EPOLLRDHUP : 0) |
           ((events & ZN_WRITABLE) ? EPOLLOUT : 0);
}


int
zn_io_start(zn_io_t *io, unsigned events)
{
    zn_loop_t *loop = io->loop;
    struct epoll_event ev;
    int rc, op;

    events &= ZN_READABLE | ZN_WRITABLE;
    if (events == 0) {
        zn_io_stop(io);
        return 0;
    }
    if (io->slot >= 0 && io->armed == events)
        return 0;
    if (io->slot < 0 && (size_t)io->fd >= loop->nios &&
        (rc = zn__loop_grow_ios(loop, io->fd)) != 0)
        return rc;
    memset(&ev, 0, sizeof(ev));
    ev.events = zn__epoll_bits(events);
    ev.data.fd = io->fd;
    op = io->slot < 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(loop->epfd, op, io->fd, &ev) < 0)
        return -errno;
    if (io->slot < 0) {
        io->slot = io->fd;
        loop->ios[io->fd] = io;
        zn__counter_add(&loop->st.io_active, 1);
    }
    io->events = io->armed = events;
    return 0;
}


/*
 * Besides removing the fd from epoll, invalidates the events for it that
 * the current batch has not dispatched yet: the fd may be closed and its
 * number reused by a new socket before the batch ends, and those events
 * belong to the old one.
 */
void
zn_io_stop(zn_io_t *io)
{
    zn_loop_t *loop = io->loop;
    int i;

    if (io->slot < 0)
        return;
    (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    loop->ios[io->slot] = NULL;
    for (i = loop->batch_pos; i < loop->batch_len; i++)
        if (loop->batch[i].data.fd == io->fd)
            loop->batch[i].data.fd = -1;
    io->slot = -1;
    io->events = io->armed = 0;
    atomic_store_explicit(&loop->st.io_active,
                          zn__counter_get(&loop->st.io_active) - 1,
                          memory_order_relaxed);
}


static unsigned
zn__events_from_epoll(uint32_t e)
{
    unsigned ev = 0;

    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        ev |= ZN_READABLE;
    if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        ev |= ZN_WRITABLE;
    if (e & (EPOLLHUP | EPOLLRDHUP))
        ev |= ZN_HANGUP;
    if (e & EPOLLERR)
        ev |= ZN_ERROR_EV;
    return ev;
}


/*
 * Dispatches one batch of epoll events. A watcher gets only the events it
 * asked for (plus hang-up and error bits); an event whose fd was stopped
 * earlier in the batch has been set to -1 by zn_io_stop().
 */
static int
zn__loop_dispatch(zn_loop_t *loop, struct epoll_event *evs, int n)
{
    unsigned ev;
    zn_io_t *io;
    int fd, ran = 0;

    loop->batch = evs;
    loop->batch_len = n;
    for (loop->batch_pos = 0; loop->batch_pos < n;) {
        fd = evs[loop->batch_pos].data.fd;
        ev = zn__events_from_epoll(evs[loop->batch_pos].events);
        loop->batch_pos++;
        if (fd < 0 || (size_t)fd >= loop->nios || (io = loop->ios[fd]) == NULL)
            continue;
        ev &= io->events | ZN_HANGUP | ZN_ERROR_EV;
        if ((ev & (ZN_READABLE | ZN_WRITABLE)) == 0 && !(ev & ZN_ERROR_EV))
            continue;
        io->cb(io, ev, io->ud);
        ran++;
    }
    loop->batch = NULL;
    loop->batch_len = loop->batch_pos = 0;
    zn__counter_add(&loop->st.io_events, (uint64_t)ran);
    return ran;
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
 * bounded by the next timer, the io callbacks, the posted tasks.
 */
int
zn_loop_run_once(zn_loop_t *loop, int timeout_ms)
{
    struct epoll_event evs[ZN__MAX_EVENTS];
    int n, ran;

    /* Outside zn_loop_run() the loop belongs to whoever runs it. */
    if (!atomic_load(&loop->running_flag))
        atomic_store(&loop->owner, zn__self());
    loop->in_iteration = true;
    loop->now = zn_now_ms();
    ran = zn__loop_run_timers(loop);
    n = epoll_wait(loop->epfd, evs, ZN__MAX_EVENTS,
                   zn__loop_timeout(loop, ran > 0 ? 0 : timeout_ms));
    zn__counter_add(&loop->st.iterations, 1);
    if (n < 0 && errno != EINTR) {
        loop->in_iteration = false;
        return -errno;
    }
    loop->now = zn_now_ms();
    if (n > 0)
        ran += zn__loop_dispatch(loop, evs, n);
    ran += (int)atomic_load(&loop->npending);
    zn__loop_run_tail(loop);
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
    zn__loop_run_tail(loop);
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
        if ((rc = zn_io_start(&loop->sig_io, ZN_READABLE)) != 0) {
            zn__close_fd(fd);
            loop->sigfd = -1;
            return rc;
        }
    }
    return 0;
}
