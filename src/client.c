/*
 * client.c: one outgoing connection at a time, with a connect time-out
 * and reconnection with exponential back-off and jitter.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "conn_int.h"
#include "loop_int.h"
#include "sockutil.h"
#include "transport.h"
#include "znet/client.h"
#include "znet/log.h"

enum {
    ZN__CL_IDLE,
    ZN__CL_CONNECTING,
    ZN__CL_CONNECTED,
    ZN__CL_WAITING
};

struct zn_client_s {
    zn_loop_t *loop;
    zn_client_opts_t o;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int state;
    int fd;                  /* while connecting */
    zn_io_t io;              /* while connecting */
    zn_timer_t timer;        /* connect time-out, or retry delay */
    zn_conn_t *conn;         /* while connected; we hold a reference */
    zn__conn_stats_t stats;
    zn__conn_group_t grp;        /* connections on the client's loop */
    zn__conn_group_t grp_remote; /* connections on conn_loop */
    zn_task_t closed_task;   /* a close on conn_loop, told to our loop */
    unsigned failures;
    uint64_t rng;
    bool stopped;
    bool free_pending;       /* freed while its connection was closing */
    unsigned in_cb;
};

static void zn__client_connect(zn_client_t *cl);
static void zn__client_conn_closed(zn_conn_t *c, void *owner);
static void zn__client_remote_closed(zn_conn_t *c, void *owner);
static void zn__client_closed_task(void *ud);


void
zn_client_opts_default(zn_client_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    zn_conn_limits_default(&o->limits);
}


int
zn_client_new(zn_loop_t *loop, const zn_client_opts_t *opts,
              zn_client_t **out)
{
    zn_client_t *cl;

    if (loop == NULL || opts == NULL || opts->host == NULL)
        return ZN_EINVAL;
    if ((cl = zn__calloc(1, sizeof(*cl))) == NULL)
        return ZN_ENOMEM;
    if (zn__sock_parse(opts->host, opts->port, &cl->addr, &cl->addrlen)) {
        zn__free(cl);
        return ZN_EINVAL;
    }
    cl->o = *opts;
    cl->o.host = NULL;
    if (cl->o.connect_timeout_ms == 0)
        cl->o.connect_timeout_ms = 10000;
    if (cl->o.backoff_min_ms == 0)
        cl->o.backoff_min_ms = 100;
    if (cl->o.backoff_max_ms == 0)
        cl->o.backoff_max_ms = 10000;
    cl->loop = loop;
    cl->fd = -1;
    cl->state = ZN__CL_IDLE;
    cl->rng = zn_now_ns() ^ (uint64_t)(uintptr_t)cl;
    cl->grp = (zn__conn_group_t){&zn__transport_socket, &cl->o.handler,
                                 &cl->o.limits, &cl->stats,
                                 zn__client_conn_closed, cl, NULL, 0};
    cl->grp_remote = cl->grp;
    cl->grp_remote.closed_fn = zn__client_remote_closed;
    zn_task_init(&cl->closed_task, zn__client_closed_task, cl);
    zn_timer_init(loop, &cl->timer, NULL, cl);
    *out = cl;
    return 0;
}


unsigned
zn_client_failures(const zn_client_t *cl)
{
    return cl->failures;
}


zn_conn_t *
zn_client_conn(zn_client_t *cl)
{
    if (cl->conn == NULL || !zn_conn_is_open(cl->conn))
        return NULL;
    zn_conn_ref(cl->conn);
    return cl->conn;
}


/* The next retry delay: min * 2^(failures-1), capped, then scaled by a
 * random factor in [0.5, 1) so that many clients do not retry in step. */
static uint64_t
zn__client_backoff(zn_client_t *cl)
{
    uint64_t d = cl->o.backoff_min_ms;
    unsigned i;

    for (i = 1; i < cl->failures && d < cl->o.backoff_max_ms; i++)
        d *= 2;
    if (d > cl->o.backoff_max_ms)
        d = cl->o.backoff_max_ms;
    cl->rng ^= cl->rng << 13;
    cl->rng ^= cl->rng >> 7;
    cl->rng ^= cl->rng << 17;
    return d / 2 + (d > 1 ? cl->rng % (d / 2 + 1) : 0);
}


static void
zn__client_retry_cb(zn_timer_t *t, void *ud)
{
    (void)t;
    zn__client_connect(ud);
}


/* After a failed attempt or a lost connection: wait and retry, or give up
 * and tell the user. */
static void
zn__client_failed(zn_client_t *cl, int status)
{
    bool can_retry = cl->o.reconnect && !cl->stopped &&
                     (cl->o.max_retries == 0 ||
                      cl->failures < cl->o.max_retries);

    if (can_retry) {
        cl->state = ZN__CL_WAITING;
        cl->timer.cb = zn__client_retry_cb;
        zn_timer_start(&cl->timer, zn__client_backoff(cl), 0);
        return;
    }
    cl->state = ZN__CL_IDLE;
    if (cl->stopped || cl->o.on_give_up == NULL)
        return;
    ZN_LOG(ZN_LOG_INFO, "client: giving up after %u attempts: %s",
           cl->failures, zn_strerror(status));
    cl->in_cb++;
    cl->o.on_give_up(cl, status, cl->o.handler.ud);
    cl->in_cb--;
    if (cl->free_pending && cl->in_cb == 0)
        zn_client_free(cl);
}


static void
zn__client_abandon_fd(zn_client_t *cl)
{
    zn_io_stop(&cl->io);
    zn_timer_stop(&cl->timer);
    zn__close_fd(cl->fd);
    cl->fd = -1;
}


static void
zn__client_conn_closed(zn_conn_t *c, void *owner)
{
    zn_client_t *cl = owner;

    cl->conn = NULL;
    zn_conn_unref(c);
    if (cl->free_pending) {
        zn_client_free(cl);
        return;
    }
    cl->state = ZN__CL_IDLE;
    if (!cl->stopped && cl->o.reconnect)
        zn__client_failed(cl, ZN_ECONNRESET);
}


/*
 * The connection is made here and started on the loop it lives on: at
 * once if that is the client's, else through the connection's own task
 * (the same hand-off a server makes to its IO loops; it cannot fail).
 * The client holds a reference until the close is reported back.
 */
static void
zn__client_established(zn_client_t *cl)
{
    bool remote = cl->o.conn_loop != NULL && cl->o.conn_loop != cl->loop;
    int fd = cl->fd;
    zn_conn_t *c;

    zn_io_stop(&cl->io);
    zn_timer_stop(&cl->timer);
    cl->fd = -1;
    if (cl->addr.ss_family != AF_UNIX && !cl->o.no_nodelay)
        zn__sock_nodelay(fd);
    cl->failures = 0;
    c = zn__conn_new(remote ? cl->o.conn_loop : cl->loop, fd,
                     remote ? &cl->grp_remote : &cl->grp);
    if (c == NULL) {
        zn__close_fd(fd);
        cl->failures++;
        zn__client_failed(cl, ZN_ENOMEM);
        return;
    }
    zn_conn_ref(c); /* the client's; given back when it closes */
    zn__counter_add(&cl->stats.accepted, 1);
    cl->conn = c;
    cl->state = ZN__CL_CONNECTED;
    if (remote)
        zn__conn_handoff(c);
    else
        zn__conn_start(c);
}


/* On the client's loop: a connection on conn_loop has closed. */
static void
zn__client_closed_task(void *ud)
{
    zn_client_t *cl = ud;

    zn__client_conn_closed(cl->conn, cl);
}


/* On conn_loop: the connection closed; the client's state belongs to the
 * client's loop, so the news crosses there. One connection at a time: the
 * task is never queued twice. */
static void
zn__client_remote_closed(zn_conn_t *c, void *owner)
{
    zn_client_t *cl = owner;

    (void)c;
    (void)zn_loop_post_task(cl->loop, &cl->closed_task);
}


static void
zn__client_connect_fail(zn_client_t *cl, int err)
{
    zn__client_abandon_fd(cl);
    cl->failures++;
    zn__counter_add(&cl->stats.closes[ZN_CLOSE_CONNECT], 1);
    ZN_LOG_RL(ZN_LOG_DEBUG, 5, "client: connect: %s", zn_strerror(err));
    zn__client_failed(cl, err);
}


static void
zn__client_io_cb(zn_io_t *io, unsigned events, void *ud)
{
    zn_client_t *cl = ud;
    int err = 0;
    socklen_t len = sizeof(err);

    (void)io;
    (void)events;
    if (getsockopt(cl->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err != 0)
        zn__client_connect_fail(cl, -err);
    else
        zn__client_established(cl);
}


static void
zn__client_timeout_cb(zn_timer_t *t, void *ud)
{
    (void)t;
    zn__client_connect_fail(ud, ZN_ETIMEDOUT);
}


static void
zn__client_connect(zn_client_t *cl)
{
    bool in_progress;
    int fd, rc;

    cl->state = ZN__CL_CONNECTING;
    fd = zn__sock_connect(&cl->addr, cl->addrlen, &in_progress);
    if (fd < 0) {
        cl->failures++;
        zn__counter_add(&cl->stats.closes[ZN_CLOSE_CONNECT], 1);
        zn__client_failed(cl, fd);
        return;
    }
    cl->fd = fd;
    if (!in_progress) {
        zn__client_established(cl);
        return;
    }
    zn_io_init(cl->loop, &cl->io, fd, zn__client_io_cb, cl);
    if ((rc = zn_io_start(&cl->io, ZN_EV_WRITABLE)) != 0) {
        zn__client_connect_fail(cl, rc);
        return;
    }
    cl->timer.cb = zn__client_timeout_cb;
    zn_timer_start(&cl->timer, cl->o.connect_timeout_ms, 0);
}


int
zn_client_start(zn_client_t *cl)
{
    if (cl->state != ZN__CL_IDLE)
        return ZN_EALREADY;
    cl->stopped = false;
    cl->failures = 0;
    zn__client_connect(cl);
    return 0;
}


void
zn_client_stop(zn_client_t *cl, bool abortive)
{
    cl->stopped = true;
    zn_timer_stop(&cl->timer);
    if (cl->fd >= 0)
        zn__client_abandon_fd(cl);
    if (cl->conn != NULL)
        zn_conn_close_reason(cl->conn, ZN_CLOSE_SHUTDOWN, abortive);
    else
        cl->state = ZN__CL_IDLE;
}


/*
 * A client with an open connection cannot go at once: the connection still
 * points at the handler and limits stored here, until its close finishes
 * on the loop. The memory then goes from the close hook.
 */
void
zn_client_free(zn_client_t *cl)
{
    if (cl == NULL)
        return;
    zn_client_stop(cl, true);
    if (cl->conn != NULL || cl->in_cb > 0) {
        cl->free_pending = true;
        return;
    }
    zn__free(cl);
}
