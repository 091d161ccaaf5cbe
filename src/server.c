/*
 * server.c: listeners, accepting, the hand-off of connections to IO loops,
 * the table of live connections by id, and an orderly stop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn_int.h"
#include "idmap.h"
#include "loop_int.h"
#include "pool_int.h"
#include "sockutil.h"
#include "transport.h"
#include "znet/log.h"
#include "znet/server.h"

#define ZN__EMFILE_BACKOFF_MAX_MS 1000

/* The server's part of one loop: its connections' group and counters,
 * and what a stop needs there. */
typedef struct zn__ioctx_s {
    zn_server_t *srv;
    zn_loop_t *loop;
    unsigned index;          /* in the pool; the main loop's is unused */
    zn__conn_stats_t stats;
    zn__conn_group_t grp;    /* what this loop's connections share */
    _Atomic unsigned nconns;
    zn_task_t drain_task;    /* the stop, carried to an IO loop */
    zn_task_t unlisten_task; /* zn_server_stop_accepting, likewise */
    zn_timer_t drain_timer;
    uint64_t drain_deadline;
    bool aborted;
    bool closing;            /* the main loop's closes have begun */
} zn__ioctx_t;

typedef struct {
    zn_server_t *srv;
    zn__ioctx_t *ctx;        /* the loop that accepts on this listener */
    int fd;
    int spare_fd;            /* kept for the EMFILE accept-and-drop */
    zn_io_t io;
    zn_timer_t pause_timer;
    uint64_t backoff;
} zn__listener_t;

struct zn_server_s {
    zn_loop_t *main;
    zn_server_opts_t o;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    zn__ioctx_t main_ctx;
    zn_loop_pool_t *pool;    /* the IO loops, io_threads > 0 */
    zn__ioctx_t *io;         /* one per IO loop */
    unsigned nio;
    zn__listener_t *ls;
    unsigned nls;
    unsigned rr;
    uint16_t port;
    bool started;
    bool stopped;
    char *reject;            /* copy of opts.reject_data */
    pthread_mutex_t mu;      /* guards map */
    zn__idmap_t map;
    _Atomic unsigned live;
    _Atomic size_t in_held;  /* every connection's input storage */
    pthread_mutex_t stop_mu; /* with stop_cv: listeners closed on IO loops */
    pthread_cond_t stop_cv;
    unsigned closing;        /* IO loops still closing their listeners */
};

static void zn__listener_cb(zn_io_t *io, unsigned events, void *ud);
static void zn__listener_resume(zn_timer_t *t, void *ud);


static void zn__server_conn_closed(zn_conn_t *c, void *owner);
static void zn__ctx_drain_task(void *ud);
static void zn__ctx_unlisten_task(void *ud);


static void
zn__ioctx_init(zn_server_t *s, zn__ioctx_t *ctx, zn_loop_t *loop)
{
    ctx->srv = s;
    ctx->loop = loop;
    zn_task_init(&ctx->drain_task, zn__ctx_drain_task, ctx);
    zn_task_init(&ctx->unlisten_task, zn__ctx_unlisten_task, ctx);
    ctx->grp.tp = &zn__transport_socket;
    ctx->grp.h = &s->o.handler;
    ctx->grp.limits = &s->o.limits;
    ctx->grp.stats = &ctx->stats;
    ctx->grp.closed_fn = zn__server_conn_closed;
    ctx->grp.owner = ctx;
    ctx->grp.in_held = &s->in_held;
    ctx->grp.in_budget = s->o.in_budget;
}


void
zn_server_opts_default(zn_server_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    zn_conn_limits_default(&o->limits);
    o->in_budget = (size_t)1 << 30;
}


int
zn_server_new(zn_loop_t *loop, const zn_server_opts_t *opts,
              zn_server_t **out)
{
    zn_server_t *s;
    int rc;

    if (loop == NULL || opts == NULL || opts->io_threads > 256)
        return ZN_EINVAL;
    if ((s = zn__calloc(1, sizeof(*s))) == NULL)
        return ZN_ENOMEM;
    s->o = *opts;
    rc = zn__sock_parse(opts->host, opts->port, &s->addr, &s->addrlen);
    if (rc != 0) {
        zn__free(s);
        return rc;
    }
    s->o.host = NULL; /* the parsed address is kept instead */
    if (opts->reject_len > 0) {
        if ((s->reject = zn__malloc(opts->reject_len)) == NULL) {
            zn__free(s);
            return ZN_ENOMEM;
        }
        memcpy(s->reject, opts->reject_data, opts->reject_len);
    }
    if (s->o.backlog <= 0)
        s->o.backlog = 511;
    if (s->o.accepts_per_wakeup == 0)
        s->o.accepts_per_wakeup = 64;
    if (s->o.emfile_backoff_ms == 0)
        s->o.emfile_backoff_ms = 100;
    s->main = loop;
    zn__ioctx_init(s, &s->main_ctx, loop);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->stop_mu, NULL);
    pthread_cond_init(&s->stop_cv, NULL);
    *out = s;
    return 0;
}


uint16_t
zn_server_port(const zn_server_t *s)
{
    return s->port;
}


unsigned
zn_server_loop_count(const zn_server_t *s)
{
    return s->nio ? s->nio : 1;
}


zn_loop_t *
zn_server_main_loop(const zn_server_t *s)
{
    return s->main;
}


zn_loop_t *
zn_server_loop(const zn_server_t *s, unsigned i)
{
    if (s->nio == 0)
        return i == 0 ? s->main : NULL;
    return zn_loop_pool_get(s->pool, i);
}

/* ---- connections ------------------------------------------------------- */


static void
zn__server_conn_closed(zn_conn_t *c, void *owner)
{
    zn__ioctx_t *ctx = owner;
    zn_server_t *s = ctx->srv;

    pthread_mutex_lock(&s->mu);
    zn__idmap_del(&s->map, c->id);
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_sub(&ctx->nconns, 1);
    atomic_fetch_sub(&s->live, 1);
}


/* Picks the IO loop for a new connection. */
static zn__ioctx_t *
zn__server_pick(zn_server_t *s)
{
    unsigned i, best = 0, n, min = UINT32_MAX;

    if (s->o.balance != ZN_BALANCE_LEAST_CONNS)
        return &s->io[s->rr++ % s->nio];
    for (i = 0; i < s->nio; i++) {
        n = atomic_load(&s->io[(s->rr + i) % s->nio].nconns);
        if (n < min) {
            min = n;
            best = (s->rr + i) % s->nio;
        }
    }
    s->rr++;
    return &s->io[best];
}


/*
 * Makes the connection for an accepted socket on the accepting thread and
 * starts it on its loop: at once if that is this loop, else through the
 * connection's own task (the hand-off to an IO loop, which allocates
 * nothing more and cannot fail). It lives on that loop for good.
 */
static void
zn__server_dispatch(zn__listener_t *l, int fd)
{
    zn_server_t *s = l->srv;
    zn__ioctx_t *ctx = l->ctx;
    zn_conn_t *c;
    int rc = ZN_ENOMEM;

    if (s->nio > 0 && ctx == &s->main_ctx)
        ctx = zn__server_pick(s);
    atomic_fetch_add(&ctx->nconns, 1);
    if ((c = zn__conn_new(ctx->loop, fd, &ctx->grp)) != NULL) {
        pthread_mutex_lock(&s->mu);
        rc = zn__idmap_put(&s->map, c->id, c);
        pthread_mutex_unlock(&s->mu);
        if (rc != 0)
            zn_conn_unref(c); /* never started: frees it, fd untouched */
    }
    if (rc != 0) {
        ZN_LOG_RL(ZN_LOG_ERROR, 1, "server: out of memory for a connection");
        zn__close_fd(fd);
        atomic_fetch_sub(&ctx->nconns, 1);
        atomic_fetch_sub(&s->live, 1);
        return;
    }
    zn__counter_add(&l->ctx->stats.accepted, 1);
    if (ctx == l->ctx)
        zn__conn_start(c);
    else
        zn__conn_handoff(c);
}

/* ---- accepting --------------------------------------------------------- */


/* Over max_conns: accept, say why if the protocol has words for it, close. */
static void
zn__server_reject(zn__listener_t *l, int fd)
{
    zn_server_t *s = l->srv;

    zn__counter_add(&l->ctx->stats.rejected, 1);
    zn__counter_add(&l->ctx->stats.closes[ZN_CLOSE_MAX_CONNS], 1);
    if (s->reject != NULL)
        (void)send(fd, s->reject, s->o.reject_len,
                   MSG_NOSIGNAL | MSG_DONTWAIT);
    zn__close_fd(fd);
    ZN_LOG_RL(ZN_LOG_WARN, 1, "server: over %u connections, refusing",
              s->o.max_conns);
}


/*
 * Out of descriptors. Accepting again at once would fail again and spin,
 * so the listener pauses for a back-off that doubles up to a second and
 * resets after a good accept. The spare descriptor lets us take one
 * pending connection and close it, so that its peer learns at once instead
 * of waiting in the backlog.
 */
static void
zn__listener_emfile(zn__listener_t *l, int err)
{
    int fd;

    zn__counter_add(&l->ctx->stats.emfile, 1);
    ZN_LOG_RL(ZN_LOG_WARN, 1, "server: accept: %s; pausing %llu ms",
              zn_strerror(err), (unsigned long long)l->backoff);
    if (l->spare_fd >= 0) {
        zn__close_fd(l->spare_fd);
        fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            zn__close_fd(fd);
        l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    zn_io_stop(&l->io);
    zn_timer_start(&l->pause_timer, l->backoff, 0);
    l->backoff *= 2;
    if (l->backoff > ZN__EMFILE_BACKOFF_MAX_MS)
        l->backoff = ZN__EMFILE_BACKOFF_MAX_MS;
}


static void
zn__listener_resume(zn_timer_t *t, void *ud)
{
    zn__listener_t *l = ud;

    (void)t;
    if (l->fd >= 0 && zn_io_start(&l->io, ZN_EV_READABLE) != 0)
        zn_timer_start(&l->pause_timer, l->backoff, 0);
}


/* Accepts up to accepts_per_wakeup connections, so one busy listener
 * cannot starve the connections already open on the same loop. */
static void
zn__listener_cb(zn_io_t *io, unsigned events, void *ud)
{
    zn__listener_t *l = ud;
    zn_server_t *s = l->srv;
    unsigned i;
    int fd, err;

    (void)io;
    (void)events;
    for (i = 0; i < s->o.accepts_per_wakeup; i++) {
        fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            err = -errno;
            if (err == ZN_EAGAIN || err == ZN_ECONNABORTED || err == -EINTR)
                return;
            if (err == ZN_EMFILE || err == ZN_ENFILE || err == ZN_ENOBUFS ||
                err == ZN_ENOMEM) {
                zn__listener_emfile(l, err);
                return;
            }
            zn__counter_add(&l->ctx->stats.accept_errors, 1);
            ZN_LOG_RL(ZN_LOG_ERROR, 1, "server: accept: %s", zn_strerror(err));
            return;
        }
        l->backoff = s->o.emfile_backoff_ms;
        if (s->o.max_conns > 0 && atomic_load(&s->live) >= s->o.max_conns) {
            zn__server_reject(l, fd);
            continue;
        }
        atomic_fetch_add(&s->live, 1);
        if (s->addr.ss_family != AF_UNIX && !s->o.no_nodelay)
            zn__sock_nodelay(fd);
        zn__server_dispatch(l, fd);
    }
}

/* ---- start ------------------------------------------------------------- */


static int
zn__listener_open(zn_server_t *s, zn__listener_t *l, zn__ioctx_t *ctx)
{
    int rc;

    l->srv = s;
    l->ctx = ctx;
    l->backoff = s->o.emfile_backoff_ms;
    l->fd = zn__sock_listen(&s->addr, s->addrlen, s->o.backlog,
                            s->o.reuseport);
    if (l->fd < 0)
        return l->fd;
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    zn_io_init(ctx->loop, &l->io, l->fd, zn__listener_cb, l);
    zn_timer_init(ctx->loop, &l->pause_timer, zn__listener_resume, l);
    if ((rc = zn_io_start(&l->io, ZN_EV_READABLE)) != 0) {
        zn__close_fd(l->fd);
        zn__close_fd(l->spare_fd);
        l->fd = -1;
    }
    return rc;
}


/* On the listener's loop thread (or before that loop runs). */
static void
zn__listener_close(zn__listener_t *l)
{
    if (l->fd < 0)
        return;
    zn_io_stop(&l->io);
    zn_timer_stop(&l->pause_timer);
    zn__close_fd(l->fd);
    zn__close_fd(l->spare_fd);
    l->fd = l->spare_fd = -1;
}


/* Binds the listeners: one on the main loop, or with reuseport one per IO
 * loop, all on the port the first one got. */
static int
zn__server_listen(zn_server_t *s)
{
    bool per_loop = s->o.reuseport && s->nio > 0;
    unsigned i, n = per_loop ? s->nio : 1;
    int rc = 0;

    if (s->addr.ss_family == AF_UNIX) {
        struct stat st;
        const char *path = ((struct sockaddr_un *)&s->addr)->sun_path;
        if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
            (void)unlink(path);
    }
    if ((s->ls = zn__calloc(n, sizeof(*s->ls))) == NULL)
        return ZN_ENOMEM;
    for (i = 0; i < n; i++)
        s->ls[i].fd = s->ls[i].spare_fd = -1;
    s->nls = n;
    for (i = 0; i < n && rc == 0; i++) {
        rc = zn__listener_open(s, &s->ls[i], per_loop ? &s->io[i]
                                                      : &s->main_ctx);
        if (rc == 0 && i == 0) {
            s->port = zn__sock_port(s->ls[0].fd);
            if (s->addr.ss_family == AF_INET)
                ((struct sockaddr_in *)&s->addr)->sin_port = htons(s->port);
            else if (s->addr.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&s->addr)->sin6_port = htons(s->port);
        }
    }
    return rc;
}


/* The IO loops and their contexts; their threads start later, once the
 * listeners are set up on them. */
static int
zn__server_make_loops(zn_server_t *s)
{
    unsigned i;
    int rc;

    if (s->o.io_threads == 0)
        return 0;
    if ((s->io = zn__calloc(s->o.io_threads, sizeof(*s->io))) == NULL)
        return ZN_ENOMEM;
    if ((rc = zn__loop_pool_create(s->o.io_threads, "io", &s->pool)) != 0)
        return rc;
    s->nio = s->o.io_threads; /* only now: zn__server_release() walks io */
    for (i = 0; i < s->nio; i++) {
        zn__ioctx_init(s, &s->io[i], zn_loop_pool_get(s->pool, i));
        s->io[i].index = i;
    }
    return 0;
}


static void zn__server_release(zn_server_t *s);


int
zn_server_start(zn_server_t *s)
{
    int rc;

    if (s->started)
        return ZN_EALREADY;
    if ((rc = zn__server_make_loops(s)) != 0 ||
        (rc = zn__server_listen(s)) != 0 ||
        (s->pool != NULL && (rc = zn__loop_pool_run(s->pool)) != 0))
        goto fail;
    s->started = true;
    return 0;

fail:
    zn__server_release(s);
    return rc;
}


/* True while the IO loop of ctx runs on its thread. */
static bool
zn__ctx_running(const zn_server_t *s, const zn__ioctx_t *ctx)
{
    return ctx != &s->main_ctx && s->pool != NULL &&
           zn__loop_pool_running(s->pool, ctx->index);
}

/* ---- lookup and stats -------------------------------------------------- */


zn_conn_t *
zn_server_find(zn_server_t *s, uint64_t id)
{
    zn_conn_t *c;

    pthread_mutex_lock(&s->mu);
    c = zn__idmap_get(&s->map, id);
    if (c != NULL)
        zn_conn_ref(c);
    pthread_mutex_unlock(&s->mu);
    return c;
}


/*
 * Takes a reference on every connection (of one loop, or all if `ctx` is
 * NULL) under the lock, so that the callbacks run without it. Returns the
 * array (the caller unrefs each and frees it) and its length in *n, or
 * NULL with *n = 0.
 */
static zn_conn_t **
zn__server_collect(zn_server_t *s, const zn__ioctx_t *ctx, size_t *n)
{
    zn_conn_t **v, *c;
    size_t i;

    *n = 0;
    pthread_mutex_lock(&s->mu);
    v = zn__malloc((s->map.n ? s->map.n : 1) * sizeof(*v));
    for (i = 0; v != NULL && i < s->map.cap; i++) {
        c = s->map.slots[i].val;
        if (c != NULL && (ctx == NULL || c->g->owner == ctx)) {
            zn_conn_ref(c);
            v[(*n)++] = c;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return v;
}


void
zn_server_foreach(zn_server_t *s, void (*cb)(zn_conn_t *c, void *arg),
                  void *arg)
{
    zn_conn_t **v;
    size_t i, n;

    v = zn__server_collect(s, NULL, &n);
    for (i = 0; i < n; i++) {
        cb(v[i], arg);
        zn_conn_unref(v[i]);
    }
    zn__free(v);
}


static void
zn__stats_add(zn_server_stats_t *st, const zn__ioctx_t *ctx)
{
    const zn__conn_stats_t *c = &ctx->stats;
    unsigned r;

    st->conns_live += zn__counter_get(&c->live);
    st->conns_accepted += zn__counter_get(&c->accepted);
    st->conns_rejected += zn__counter_get(&c->rejected);
    st->emfile_events += zn__counter_get(&c->emfile);
    st->accept_errors += zn__counter_get(&c->accept_errors);
    st->bytes_in += zn__counter_get(&c->bytes_in);
    st->bytes_out += zn__counter_get(&c->bytes_out);
    st->sends_dropped += zn__counter_get(&c->sends_dropped);
    st->high_water_events += zn__counter_get(&c->high_water);
    for (r = 0; r < ZN_CLOSE_REASON_MAX; r++)
        st->closes[r] += zn__counter_get(&c->closes[r]);
    if (ctx->loop != NULL)
        st->tasks_queued += atomic_load(&ctx->loop->npending);
}


void
zn_server_stats(const zn_server_t *s, zn_server_stats_t *st)
{
    unsigned i;

    memset(st, 0, sizeof(*st));
    zn__stats_add(st, &s->main_ctx);
    for (i = 0; i < s->nio; i++)
        zn__stats_add(st, &s->io[i]);
    st->in_held = atomic_load(&s->in_held);
}

/* ---- stop -------------------------------------------------------------- */


static void
zn__ctx_close_all(zn_server_t *s, zn__ioctx_t *ctx, bool abortive)
{
    zn_conn_t **v;
    size_t i, n;

    v = zn__server_collect(s, ctx, &n);
    for (i = 0; i < n; i++) {
        zn_conn_close_reason(v[i], ZN_CLOSE_SHUTDOWN, abortive);
        zn_conn_unref(v[i]);
    }
    zn__free(v);
}


/* Checks a draining IO loop: stops it once its connections are gone, and
 * turns the remaining closes abortive when the drain time is over. */
static void
zn__ctx_drain_check(zn_timer_t *t, void *ud)
{
    zn__ioctx_t *ctx = ud;

    if (atomic_load(&ctx->nconns) == 0) {
        zn_timer_stop(t);
        zn_loop_stop(ctx->loop);
        return;
    }
    if (!ctx->aborted && zn_loop_now(ctx->loop) >= ctx->drain_deadline) {
        ctx->aborted = true;
        zn__ctx_close_all(ctx->srv, ctx, true);
    }
}


static void
zn__ctx_drain_task(void *ud)
{
    zn__ioctx_t *ctx = ud;
    zn_server_t *s = ctx->srv;
    unsigned i;

    for (i = 0; i < s->nls; i++)
        if (s->ls[i].ctx == ctx)
            zn__listener_close(&s->ls[i]);
    zn__ctx_close_all(s, ctx, ctx->aborted);
    zn_timer_init(ctx->loop, &ctx->drain_timer, zn__ctx_drain_check, ctx);
    zn_timer_start(&ctx->drain_timer, 0, 2);
}


static void
zn__main_close_task(void *ud)
{
    zn__ioctx_t *ctx = ud;

    ctx->closing = true;
    zn__ctx_close_all(ctx->srv, ctx, ctx->aborted);
}


/*
 * The main loop drains its own connections by running itself. The closes
 * ride on a task, behind the tasks queued already (answers that workers
 * posted before the stop, for instance), as on the IO loops: closed first,
 * a connection would drop those answers.
 */
static void
zn__server_drain_main(zn_server_t *s, uint64_t drain_ms)
{
    zn__ioctx_t *ctx = &s->main_ctx;
    uint64_t deadline = zn_now_ms() + drain_ms;
    zn_task_t close_task;

    ctx->aborted = drain_ms == 0;
    ctx->closing = false;
    zn_task_init(&close_task, zn__main_close_task, ctx);
    if (zn_loop_post_task(s->main, &close_task) != 0)
        zn__main_close_task(ctx);
    while (!ctx->closing || atomic_load(&ctx->nconns) > 0) {
        if (ctx->closing && !ctx->aborted && zn_now_ms() >= deadline) {
            ctx->aborted = true;
            zn__ctx_close_all(s, ctx, true);
        }
        (void)zn_loop_run_once(s->main, 5);
    }
}


/* On an IO loop: closes the listeners it accepts on (reuseport), then
 * tells the thread waiting in zn_server_stop_accepting(). */
static void
zn__ctx_unlisten_task(void *ud)
{
    zn__ioctx_t *ctx = ud;
    zn_server_t *s = ctx->srv;
    unsigned i;

    for (i = 0; i < s->nls; i++)
        if (s->ls[i].ctx == ctx)
            zn__listener_close(&s->ls[i]);
    pthread_mutex_lock(&s->stop_mu);
    if (--s->closing == 0)
        pthread_cond_broadcast(&s->stop_cv);
    pthread_mutex_unlock(&s->stop_mu);
}


/*
 * The main loop's listeners close here; a listener of an IO loop
 * (reuseport) is closed by its own loop, and the call waits for that, so
 * that no connection is accepted anywhere once it returns.
 */
void
zn_server_stop_accepting(zn_server_t *s)
{
    unsigned i;

    for (i = 0; i < s->nls; i++)
        if (!zn__ctx_running(s, s->ls[i].ctx))
            zn__listener_close(&s->ls[i]);
    if (!s->o.reuseport || s->nio == 0)
        return;
    pthread_mutex_lock(&s->stop_mu);
    s->closing = 0;
    for (i = 0; i < s->nio; i++)
        if (zn__ctx_running(s, &s->io[i]) &&
            zn_loop_post_task(s->io[i].loop, &s->io[i].unlisten_task) == 0)
            s->closing++;
    while (s->closing > 0)
        pthread_cond_wait(&s->stop_cv, &s->stop_mu);
    pthread_mutex_unlock(&s->stop_mu);
}


/* Joins the IO threads and closes the listeners. The IO loops stay until
 * zn_server_free(): a deferred answer may still be posted to one after
 * the stop (it finds its connection closed), and the counters stay
 * readable. */
static void
zn__server_join(zn_server_t *s)
{
    unsigned i;

    if (s->pool != NULL)
        zn_loop_pool_stop(s->pool);
    /* No IO thread runs now: their listeners can be closed from here. */
    for (i = 0; i < s->nls; i++)
        zn__listener_close(&s->ls[i]);
}


/* Frees the loops and listeners (after a stop, or a start that failed
 * half-way); running a loop's last tasks here ends what they carry. */
static void
zn__server_release(zn_server_t *s)
{
    zn__server_join(s);
    zn_loop_pool_free(s->pool);
    zn__free(s->ls);
    zn__free(s->io);
    s->pool = NULL;
    s->ls = NULL;
    s->io = NULL;
    s->nls = s->nio = 0;
}


void
zn_server_stop(zn_server_t *s, uint64_t drain_ms)
{
    unsigned i;

    if (!s->started || s->stopped)
        return;
    s->stopped = true;
    zn_server_stop_accepting(s);
    for (i = 0; i < s->nio; i++) {
        s->io[i].aborted = drain_ms == 0;
        s->io[i].drain_deadline = zn_now_ms() + drain_ms;
        (void)zn_loop_post_task(s->io[i].loop, &s->io[i].drain_task);
    }
    /* Each IO loop stops itself once drained. */
    if (s->pool != NULL)
        zn__loop_pool_join(s->pool);
    zn__server_drain_main(s, drain_ms);
    zn__server_join(s);
}


void
zn_server_free(zn_server_t *s)
{
    if (s == NULL)
        return;
    zn_server_stop(s, 0);
    zn__server_release(s);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->stop_mu);
    pthread_cond_destroy(&s->stop_cv);
    zn__free(s->map.slots);
    zn__free(s->reject);
    zn__free(s);
}
