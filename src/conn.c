/*
 * conn.c: a connection. Reads into the loop's scratch area (no allocation
 * for input that the handler consumes at once), queues output in one
 * contiguous buffer, batches the replies of one on_data into one write,
 * and closes in two steps: the close request (any thread, idempotent) and
 * the finish (on the loop, later, once), which runs on_close.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn_int.h"
#include "loop_int.h"
#include "transport.h"
#include "znet/log.h"

#define ZN__DEFAULT_LINGER_MS 30000

static _Atomic uint64_t zn__next_conn_id = 1;

static const char *const zn__close_names[ZN_CLOSE_REASON_MAX] = {
    "local",   "peer",      "error",    "output_cap", "idle",    "deadline",
    "protocol", "input_cap", "max_conns", "shutdown", "connect", "nomem",
    "input_budget"};

static void zn__conn_io_cb(zn_io_t *io, unsigned events, void *ud);
static void zn__conn_timer_cb(zn_timer_t *t, void *ud);
static void zn__conn_task(zn_task_node_t *n);
static void zn__conn_request(zn_conn_t *c, unsigned bits);
static void zn__conn_close_loop(zn_conn_t *c, zn_close_reason_t reason,
                                bool abortive);
static void zn__conn_flush(zn_conn_t *c);
static void zn__conn_arm(zn_conn_t *c);
static void zn__conn_account_input(zn_conn_t *c, size_t before,
                                   size_t after);


/* The input storage a connection holds (capacity, not length: what the
 * budget protects is memory). */
static size_t
zn__in_cap(const zn_conn_t *c)
{
    return c->in != NULL && !c->in->borrowed ? c->in->cap : 0;
}


static inline size_t
zn__out_len(const zn_conn_t *c)
{
    return c->out != NULL ? zn_buf_len(c->out) : 0;
}


static inline size_t
zn__in_len(const zn_conn_t *c)
{
    return c->in != NULL ? zn_buf_len(c->in) : 0;
}


/* Buffers exist only while they hold bytes: an idle connection has none. */
static zn_buf_t *
zn__buf_get(zn_buf_t **b)
{
    if (*b == NULL && (*b = zn__malloc(sizeof(**b))) != NULL)
        zn_buf_init(*b);
    return *b;
}


static void
zn__buf_drop(zn_buf_t **b)
{
    if (*b == NULL)
        return;
    zn_buf_free(*b);
    zn__free(*b);
    *b = NULL;
}


/*
 * Output buffers come from, and go back to, one spare that the loop keeps:
 * a request answered and written at once then costs no allocation for its
 * reply, and an idle connection still holds no buffer. Storage larger than
 * this is freed rather than kept. Loop thread only.
 */
#define ZN__SPARE_OUT_MAX 4096

static zn_buf_t *
zn__out_get(zn_conn_t *c)
{
    if (c->out == NULL && c->io.loop->spare_out != NULL) {
        c->out = c->io.loop->spare_out;
        c->io.loop->spare_out = NULL;
    }
    return zn__buf_get(&c->out);
}


static void
zn__out_drop(zn_conn_t *c)
{
    zn_buf_t *b = c->out;

    if (b != NULL && c->io.loop->spare_out == NULL && !b->borrowed &&
        b->cap <= ZN__SPARE_OUT_MAX) {
        zn_buf_reset(b);
        c->io.loop->spare_out = b;
        c->out = NULL;
        return;
    }
    zn__buf_drop(&c->out);
}


const char *
zn_close_reason_name(zn_close_reason_t r)
{
    if ((unsigned)r >= ZN_CLOSE_REASON_MAX)
        return "unknown";
    return zn__close_names[r];
}


void
zn_conn_limits_default(zn_conn_limits_t *l)
{
    l->out_high = 4u << 20;
    l->out_low = 1u << 20;
    l->out_hard = 64u << 20;
    l->in_max = 64u << 20;
    l->idle_ms = 0;
    l->linger_ms = ZN__DEFAULT_LINGER_MS;
}


uint64_t
zn__conn_next_id(void)
{
    return atomic_fetch_add_explicit(&zn__next_conn_id, 1,
                                     memory_order_relaxed);
}

/* ---- references -------------------------------------------------------- */


void
zn_conn_ref(zn_conn_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}


/* The last reference frees the memory; by then the loop has finished the
 * connection (the loop's own reference is the one given back last by the
 * finish), so nothing else of it remains. */
void
zn_conn_unref(zn_conn_t *c)
{
    /* acq_rel rather than release + fence: same code on x86, and TSan
     * understands it. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    zn__buf_drop(&c->in);
    zn__buf_drop(&c->out);
    zn__free(c->tm);
    if (c->own_group)
        zn__free((void *)c->g);
    zn__free(c);
}


uint64_t
zn_conn_id(const zn_conn_t *c)
{
    return c->id;
}


zn_loop_t *
zn_conn_loop(const zn_conn_t *c)
{
    return c->io.loop;
}


bool
zn_conn_is_open(const zn_conn_t *c)
{
    return atomic_load_explicit(&((zn_conn_t *)c)->state,
                                memory_order_acquire) == ZN__OPEN;
}


void
zn_conn_set_data(zn_conn_t *c, void *data)
{
    atomic_store_explicit(&c->data, data, memory_order_release);
}


void *
zn_conn_get_data(const zn_conn_t *c)
{
    return atomic_load_explicit(&((zn_conn_t *)c)->data,
                                memory_order_acquire);
}


size_t
zn_conn_out_len(const zn_conn_t *c)
{
    return zn__out_len(c);
}


int
zn_conn_fd(const zn_conn_t *c)
{
    return c->io.fd;
}


/* The limits live in the group that the connection shares; replacing
 * them for one connection gives it a group of its own. */
int
zn_conn_set_limits(zn_conn_t *c, const zn_conn_limits_t *l)
{
    zn__conn_group_t *g;

    if (l == NULL)
        return ZN_EINVAL;
    if (!c->own_group) {
        if ((g = zn__malloc(sizeof(*g))) == NULL)
            return ZN_ENOMEM;
        *g = *c->g;
        c->g = g;
        c->own_group = 1;
    }
    ((zn__conn_group_t *)c->g)->limits = l;
    return 0;
}


/* Formats the peer address on demand into a per-thread buffer: keeping it
 * in every connection would cost 20 to 48 bytes each. Loop thread: the fd
 * is read, and only the loop knows it is still this connection's. */
const char *
zn_conn_peer(const zn_conn_t *c)
{
    static __thread char text[128];
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[INET6_ADDRSTRLEN];

    if (c->io.fd < 0 || getpeername(c->io.fd, (void *)&ss, &len) != 0)
        snprintf(text, sizeof(text), "conn#%llu",
                 (unsigned long long)c->id);
    else if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (void *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(text, sizeof(text), "%s:%u", host, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (void *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(text, sizeof(text), "[%s]:%u", host, ntohs(a->sin6_port));
    } else
        snprintf(text, sizeof(text), "unix#%llu", (unsigned long long)c->id);
    return text;
}

/* ---- creation ---------------------------------------------------------- */


zn_conn_t *
zn__conn_new(zn_loop_t *loop, int fd, const zn__conn_group_t *g)
{
    zn_conn_t *c = zn__calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    atomic_init(&c->refs, 1);
    atomic_init(&c->state, ZN__OPEN);
    c->id = zn__conn_next_id();
    c->g = g;
    zn_io_init(loop, &c->io, fd, zn__conn_io_cb, c);
    c->task.fn = zn__conn_task;
    return c;
}


/* The timer block, created on first need. NULL if out of memory. */
static zn__conn_timer_t *
zn__conn_tm(zn_conn_t *c)
{
    if (c->tm == NULL && (c->tm = zn__calloc(1, sizeof(*c->tm))) != NULL) {
        zn_timer_init(c->io.loop, &c->tm->t, zn__conn_timer_cb, c);
        c->tm->last_input = zn_loop_now(c->io.loop);
    }
    return c->tm;
}


static unsigned
zn__conn_wanted(const zn_conn_t *c)
{
    unsigned ev = 0;
    int st = atomic_load_explicit(&((zn_conn_t *)c)->state,
                                  memory_order_relaxed);

    if (st == ZN__OPEN && !c->eof && !c->paused_user && !c->paused_hwm)
        ev |= ZN_EV_READABLE;
    if (st != ZN__CLOSED && zn__out_len(c) > 0)
        ev |= ZN_EV_WRITABLE;
    return ev;
}


/* Brings epoll's interest in line with the state. Not starting a watcher
 * (out of memory in the fd table) leaves a connection that cannot make
 * progress: it is closed. */
static void zn__conn_pause_clock(zn_conn_t *c, bool reading);


static void
zn__conn_update_io(zn_conn_t *c)
{
    unsigned want = zn__conn_wanted(c);
    int rc;

    if (c->tm != NULL)
        zn__conn_pause_clock(c, (want & ZN_EV_READABLE) != 0);
    if (want != 0 && c->g->tp->events != NULL)
        want = c->g->tp->events(c, want);
    if (want == 0) {
        zn_io_stop(&c->io);
        return;
    }
    if ((rc = zn_io_start(&c->io, want)) != 0) {
        ZN_LOG_RL(ZN_LOG_ERROR, 5, "conn#%llu: epoll: %s",
                  (unsigned long long)c->id, zn_strerror(rc));
        zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
    }
}


void
zn__conn_start(zn_conn_t *c)
{
    zn__counter_add(&c->g->stats->live, 1);
    if (c->g->limits->idle_ms > 0) {
        if (zn__conn_tm(c) == NULL) {
            zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
            return;
        }
        zn__conn_arm(c);
    }
    zn_conn_ref(c);
    c->in_cb++;
    c->batching = 1;
    if (c->g->h->on_connect != NULL)
        c->g->h->on_connect(c, c->g->h->ud);
    c->batching = 0;
    c->in_cb--;
    zn__conn_flush(c);
    zn__conn_update_io(c);
    zn_conn_unref(c);
}


void
zn__conn_handoff(zn_conn_t *c)
{
    zn__conn_request(c, ZN__RQ_START);
}


/* An adopted connection has no owner: it gets a group of its own, with
 * counters of its own (in the same allocation). */
typedef struct {
    zn__conn_group_t g;
    zn__conn_stats_t stats;
} zn__own_group_t;


int
zn_conn_adopt(zn_loop_t *loop, int fd, const zn_handler_t *handler,
              const zn_conn_limits_t *limits, zn_conn_t **out)
{
    zn__own_group_t *og = zn__calloc(1, sizeof(*og));
    zn_conn_t *c = og != NULL ? zn__conn_new(loop, fd, &og->g) : NULL;

    if (c == NULL) {
        zn__free(og);
        zn__close_fd(fd);
        return ZN_ENOMEM;
    }
    og->g.tp = &zn__transport_socket;
    og->g.h = handler;
    og->g.limits = limits;
    og->g.stats = &og->stats;
    c->own_group = 1;
    *out = c;
    zn__conn_start(c);
    return 0;
}


/* ---- closing ----------------------------------------------------------- */


/*
 * Asks the loop for `bits` (ZN__RQ_*). The first bit set queues the
 * connection's task, with a reference; later ones ride on it. Any thread.
 */
static void
zn__conn_request(zn_conn_t *c, unsigned bits)
{
    if (atomic_fetch_or(&c->rq, bits) != 0)
        return;
    zn_conn_ref(c);
    (void)zn__loop_post_node(c->io.loop, &c->task);
}


/*
 * The second step of a close, on the loop, outside the connection's own
 * callbacks: forget the fd (abortive: with a reset), drop buffers, run
 * on_close, tell the owner, and give back the loop's reference.
 */
static void
zn__conn_finish(zn_conn_t *c)
{
    zn_io_stop(&c->io);
    if (c->tm != NULL)
        zn_timer_stop(&c->tm->t);
    if (c->io.fd >= 0) {
        c->g->tp->close(c, c->abortive);
        c->io.fd = -1;
    }
    zn__conn_account_input(c, zn__in_cap(c), 0);
    zn__buf_drop(&c->in);
    zn__out_drop(c);
    zn__counter_add(&c->g->stats->closes[c->reason], 1);
    atomic_store_explicit(&c->g->stats->live,
                          zn__counter_get(&c->g->stats->live) - 1,
                          memory_order_relaxed);
    if (c->g->h->on_close != NULL)
        c->g->h->on_close(c, (zn_close_reason_t)c->reason, c->g->h->ud);
    if (c->g->closed_fn != NULL)
        c->g->closed_fn(c, c->g->owner);
    zn_conn_unref(c);
}


/* The finish runs from the connection's task (a post from the loop thread
 * costs no system call), so on_close never runs inside another callback
 * of the same connection, nor inside zn_conn_close(). */
static void
zn__conn_schedule_finish(zn_conn_t *c)
{
    atomic_store_explicit(&c->state, ZN__CLOSED, memory_order_release);
    zn_io_stop(&c->io);
    if (c->finishing)
        return;
    c->finishing = 1;
    zn__conn_request(c, ZN__RQ_FINISH);
}


static void
zn__conn_close_loop(zn_conn_t *c, zn_close_reason_t reason, bool abortive)
{
    int st = atomic_load_explicit(&c->state, memory_order_relaxed);

    if (st == ZN__CLOSED || (st == ZN__CLOSING && !abortive))
        return;
    if (st == ZN__OPEN)
        c->reason = (unsigned char)reason;
    if (abortive || zn__out_len(c) == 0 || c->io.fd < 0) {
        c->abortive = abortive;
        zn__conn_schedule_finish(c);
        return;
    }
    atomic_store_explicit(&c->state, ZN__CLOSING, memory_order_release);
    if (zn__conn_tm(c) == NULL) { /* no linger bound: do not wait */
        c->abortive = 1;
        zn__conn_schedule_finish(c);
        return;
    }
    zn_timer_start(&c->tm->t,
                   c->g->limits->linger_ms ? c->g->limits->linger_ms
                                           : ZN__DEFAULT_LINGER_MS,
                   0);
    zn__conn_update_io(c);
}


static void
zn__conn_shutdown_loop(zn_conn_t *c)
{
    if (atomic_load(&c->state) != ZN__OPEN || c->shut_wr)
        return;
    c->shut_wr = 1;
    zn__conn_flush(c);
}


/* True once every send posted before the last remote close or shutdown
 * was asked has run here. */
static bool
zn__conn_sends_caught_up(const zn_conn_t *c)
{
    return (int32_t)(c->sends_done -
                     atomic_load(&((zn_conn_t *)c)->rq_mark)) >= 0;
}


/*
 * A close or shutdown asked from another thread comes after the sends
 * that thread posted before it, as the program says: a graceful one waits
 * until the loop has run the send tasks posted before it was asked (the
 * last of them does it), but not for later ones, so senders that go on
 * cannot hold it off. An abortive close does not wait.
 */
static void
zn__conn_remote_close(zn_conn_t *c, unsigned rq)
{
    bool waiting = !zn__conn_sends_caught_up(c);

    if (rq & ZN__RQ_ABORT) {
        zn__conn_close_loop(c, (zn_close_reason_t)atomic_load(&c->rq_reason),
                            true);
    } else if (rq & ZN__RQ_CLOSE) {
        if (!waiting)
            zn__conn_close_loop(c,
                                (zn_close_reason_t)atomic_load(&c->rq_reason),
                                false);
        else if (!c->close_later) {
            c->close_later = 1;
            c->later_reason = atomic_load(&c->rq_reason);
        }
    }
    if ((rq & ZN__RQ_SHUTDOWN) && !waiting)
        zn__conn_shutdown_loop(c);
    else if (rq & ZN__RQ_SHUTDOWN)
        c->shut_later = 1;
}


/* The last posted send has been queued: what waited for it. */
static void
zn__conn_after_posted(zn_conn_t *c)
{
    if (c->shut_later) {
        c->shut_later = 0;
        zn__conn_shutdown_loop(c);
    }
    if (c->close_later) {
        c->close_later = 0;
        zn__conn_close_loop(c, (zn_close_reason_t)c->later_reason, false);
    }
}


/* The connection's task: everything asked since it was queued, in the
 * order a connection's life needs. */
static void
zn__conn_task(zn_task_node_t *n)
{
    zn_conn_t *c = zn__container_of(n, zn_conn_t, task);
    unsigned rq = atomic_exchange(&c->rq, 0);

    if (rq & ZN__RQ_START)
        zn__conn_start(c);
    if (rq & (ZN__RQ_CLOSE | ZN__RQ_ABORT | ZN__RQ_SHUTDOWN))
        zn__conn_remote_close(c, rq);
    if (rq & ZN__RQ_FLUSH)
        zn__conn_flush(c);
    if ((c->close_later || c->shut_later) && zn__conn_sends_caught_up(c))
        zn__conn_after_posted(c);
    if (rq & ZN__RQ_FINISH)
        zn__conn_finish(c);
    zn_conn_unref(c);
}


/* Notes how many sends this thread (and every other) had posted when it
 * asked for a close or a shutdown: the later of the marks wins, so that
 * each asker's earlier sends are written first. */
static void
zn__conn_mark(zn_conn_t *c)
{
    uint32_t now = atomic_load(&c->sends_posted);
    uint32_t old = atomic_load(&c->rq_mark);

    while ((int32_t)(now - old) > 0 &&
           !atomic_compare_exchange_weak(&c->rq_mark, &old, now))
        ;
}


void
zn_conn_close_reason(zn_conn_t *c, zn_close_reason_t reason, bool abortive)
{
    if ((unsigned)reason >= ZN_CLOSE_REASON_MAX)
        reason = ZN_CLOSE_LOCAL;
    if (zn_loop_in_thread(c->io.loop)) {
        zn__conn_close_loop(c, reason, abortive);
        return;
    }
    atomic_store(&c->rq_reason, (uint8_t)reason);
    zn__conn_mark(c);
    zn__conn_request(c, abortive ? ZN__RQ_ABORT : ZN__RQ_CLOSE);
}


void
zn_conn_close(zn_conn_t *c)
{
    zn_conn_close_reason(c, ZN_CLOSE_LOCAL, false);
}


void
zn_conn_abort(zn_conn_t *c)
{
    zn_conn_close_reason(c, ZN_CLOSE_LOCAL, true);
}


void
zn_conn_shutdown(zn_conn_t *c)
{
    if (zn_loop_in_thread(c->io.loop)) {
        zn__conn_shutdown_loop(c);
        return;
    }
    zn__conn_mark(c);
    zn__conn_request(c, ZN__RQ_SHUTDOWN);
}

/* ---- output ------------------------------------------------------------ */


/* What to do once the queue is empty: give the memory back, resume a
 * paused reader, finish a pending shutdown or graceful close. */
static void
zn__conn_drained(zn_conn_t *c)
{
    int st = atomic_load_explicit(&c->state, memory_order_relaxed);

    zn__out_drop(c);
    if (c->shut_wr && !c->shut_done && c->io.fd >= 0) {
        c->shut_done = 1;
        c->g->tp->shutdown(c);
    }
    if (st == ZN__CLOSING) {
        zn__conn_schedule_finish(c);
        return;
    }
    if (st == ZN__OPEN && c->g->h->on_write_done != NULL && c->in_cb == 0) {
        zn_conn_ref(c);
        c->in_cb++;
        c->g->h->on_write_done(c, c->g->h->ud);
        c->in_cb--;
        zn_conn_unref(c);
    }
}


/*
 * Writes what is queued. A write error closes the connection abortively
 * (the peer is gone: flushing is moot). Crossing the low mark downwards
 * resumes reading paused by the high-water mark.
 */
static void
zn__conn_flush(zn_conn_t *c)
{
    struct iovec iov;
    ssize_t n;

    if (zn__out_len(c) == 0 || c->batching ||
        atomic_load_explicit(&c->state, memory_order_relaxed) == ZN__CLOSED)
        goto done;
    iov.iov_base = (void *)zn_buf_peek(c->out);
    iov.iov_len = zn_buf_len(c->out);
    n = c->g->tp->writev(c, &iov, 1);
    if (n < 0 && n != ZN_EAGAIN) {
        zn__conn_close_loop(c, ZN_CLOSE_ERROR, true);
        return;
    }
    if (n > 0) {
        zn_buf_consume(c->out, (size_t)n);
        zn__counter_add(&c->g->stats->bytes_out, (uint64_t)n);
    }
    if (c->paused_hwm && zn__out_len(c) < c->g->limits->out_low)
        c->paused_hwm = 0;
done:
    if (zn__out_len(c) == 0)
        zn__conn_drained(c);
    zn__conn_update_io(c);
}


/* Past the high-water mark: pause reading and tell the handler once. */
static void
zn__conn_high_water(zn_conn_t *c)
{
    size_t q = zn__out_len(c);

    if (c->paused_hwm || c->g->limits->out_high == 0 || q < c->g->limits->out_high)
        return;
    c->paused_hwm = 1;
    zn__counter_add(&c->g->stats->high_water, 1);
    if (c->g->h->on_high_water != NULL) {
        zn_conn_ref(c);
        c->in_cb++;
        c->g->h->on_high_water(c, q, c->g->h->ud);
        c->in_cb--;
        zn_conn_unref(c);
    }
}


/* Appends the iovec minus its first `skip` bytes. The room was reserved. */
static void
zn__conn_queue(zn_conn_t *c, const struct iovec *iov, int iovcnt, size_t skip)
{
    size_t len;
    int i;

    for (i = 0; i < iovcnt; i++) {
        len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        (void)zn_buf_append(c->out, (const char *)iov[i].iov_base + skip,
                            len - skip);
        skip = 0;
    }
}


/*
 * A send at least this large, made first in a batch, is written at once
 * rather than copied to wait for the batch: an echo of a 16 KiB read then
 * costs no copy, and a batch of many replies still costs at most two
 * writes (docs/performance.md).
 */
#define ZN__SEND_DIRECT_MIN 4096

/*
 * Queues and, unless replies are being batched, writes. With an empty
 * queue the bytes go straight to the socket and only what it did not take
 * is copied. A write error closes the connection and is returned.
 */
static int
zn__conn_send_loop(zn_conn_t *c, const struct iovec *iov, int iovcnt)
{
    size_t total = 0, sent = 0, hard = c->g->limits->out_hard;
    ssize_t n;
    int i, rc;

    if (atomic_load_explicit(&c->state, memory_order_relaxed) != ZN__OPEN)
        return ZN_ENOTCONN;
    if (c->shut_wr)
        return ZN_ESHUTDOWN;
    for (i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (zn__out_len(c) == 0 && total > 0 &&
        (!c->batching ||
         (c->batch_direct && total >= ZN__SEND_DIRECT_MIN))) {
        c->batch_direct = 0;
        n = c->g->tp->writev(c, iov, iovcnt);
        if (n < 0 && n != ZN_EAGAIN) {
            zn__conn_close_loop(c, ZN_CLOSE_ERROR, true);
            return (int)n;
        }
        sent = n > 0 ? (size_t)n : 0;
        zn__counter_add(&c->g->stats->bytes_out, sent);
        if (sent == total) {
            zn__conn_drained(c);
            return 0;
        }
    }
    if (hard > 0 && zn__out_len(c) + (total - sent) > hard) {
        ZN_LOG_RL(ZN_LOG_WARN, 10, "%s: output queue over %zu bytes, closing",
                  zn_conn_peer(c), hard);
        zn__conn_close_loop(c, ZN_CLOSE_OUTPUT_CAP, true);
        return ZN_ENOBUFS;
    }
    if (zn__out_get(c) == NULL)
        rc = ZN_ENOMEM;
    else
        rc = zn_buf_reserve(c->out, total - sent);
    if (rc != 0) {
        if (sent > 0) /* part of a message is out: the stream is broken */
            zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
        return rc;
    }
    zn__conn_queue(c, iov, iovcnt, sent);
    if (!c->batching)
        zn__conn_update_io(c);
    zn__conn_high_water(c);
    return 0;
}


/* A send from another thread: the task and the copy in one allocation. */
typedef struct {
    zn_task_t task;
    zn_conn_t *c;
    size_t len;
    char data[];
} zn__send_req_t;


int
zn__conn_send_deferred(zn_conn_t *c, const void *data, size_t len)
{
    struct iovec iov = {(void *)data, len};
    int rc;

    c->batching = 1;
    rc = zn__conn_send_loop(c, &iov, 1);
    c->batching = 0;
    /* The flush rides on the connection's task, in the next batch; a
     * post from the loop's own thread costs no system call. */
    if (rc == 0 && zn__out_len(c) > 0)
        zn__conn_request(c, ZN__RQ_FLUSH);
    return rc;
}


static void
zn__conn_send_task(void *ud)
{
    zn__send_req_t *r = ud;
    zn_conn_t *c = r->c;
    int rc;

    rc = zn__conn_send_deferred(c, r->data, r->len);
    if (rc == ZN_ENOTCONN)
        zn__counter_add(&c->g->stats->sends_dropped, 1);
    else if (rc == ZN_ENOMEM) /* the sender was told 0: the peer must learn */
        zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
    atomic_fetch_sub(&c->posted, r->len);
    c->sends_done++;
    if ((c->close_later || c->shut_later) && zn__conn_sends_caught_up(c))
        zn__conn_after_posted(c);
    zn__free(r);
    zn_conn_unref(c);
}


/*
 * From another thread: one allocation holds the task and the copy, and
 * posting it cannot fail. Bytes in flight to the loop count against the
 * hard bound too, so a thread that sends faster than the loop writes gets
 * ZN_ENOBUFS instead of growing the task queue without end.
 */
static int
zn__conn_send_post(zn_conn_t *c, const struct iovec *iov, int iovcnt)
{
    size_t total = 0, off = 0, hard = c->g->limits->out_hard;
    zn__send_req_t *r;
    int i;

    for (i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len > SIZE_MAX - sizeof(*r) - total)
            return ZN_EINVAL;
        total += iov[i].iov_len;
    }
    if (total == 0)
        return 0;
    if (hard > 0 && atomic_fetch_add(&c->posted, total) + total > hard) {
        atomic_fetch_sub(&c->posted, total);
        return ZN_ENOBUFS;
    }
    if (hard == 0)
        atomic_fetch_add(&c->posted, total);
    if ((r = zn__malloc(sizeof(*r) + total)) == NULL) {
        atomic_fetch_sub(&c->posted, total);
        return ZN_ENOMEM;
    }
    for (i = 0; i < iovcnt; i++) {
        zn__copy(r->data + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    r->c = c;
    r->len = total;
    zn_conn_ref(c);
    zn_task_init(&r->task, zn__conn_send_task, r);
    atomic_fetch_add(&c->sends_posted, 1);
    (void)zn_loop_post_task(c->io.loop, &r->task);
    return 0;
}


int
zn_conn_sendv(zn_conn_t *c, const struct iovec *iov, int iovcnt)
{
    if (iovcnt < 0 || (iovcnt > 0 && iov == NULL))
        return ZN_EINVAL;
    if (!zn_conn_is_open(c))
        return ZN_ENOTCONN;
    if (zn_loop_in_thread(c->io.loop))
        return zn__conn_send_loop(c, iov, iovcnt);
    return zn__conn_send_post(c, iov, iovcnt);
}


int
zn_conn_send(zn_conn_t *c, const void *data, size_t len)
{
    struct iovec iov = {(void *)data, len};

    return zn_conn_sendv(c, &iov, 1);
}

/* ---- input ------------------------------------------------------------- */


/*
 * Runs on_data with replies batched: everything the handler sends goes to
 * the queue and is written with one system call when it returns.
 */
static void
zn__conn_deliver(zn_conn_t *c, zn_buf_t *in)
{
    c->in_cb++;
    c->batching = 1;
    c->batch_direct = 1;
    if (c->g->h->on_data != NULL)
        c->g->h->on_data(c, in, c->g->h->ud);
    else
        zn_buf_consume(in, zn_buf_len(in));
    c->batching = 0;
    c->batch_direct = 0;
    c->in_cb--;
}


/*
 * With nothing buffered, reads into the loop's scratch area and lends it
 * to on_data; only bytes the handler leaves (a partial frame) are copied
 * into the connection's own buffer. An idle connection so holds no input
 * memory, and a request consumed at once costs no allocation.
 */
static ssize_t
zn__conn_read_scratch(zn_conn_t *c, char *scratch)
{
    struct iovec iov = {scratch, ZN__SCRATCH_SIZE};
    zn_buf_t tmp;
    ssize_t n;

    if ((n = c->g->tp->readv(c, &iov, 1)) <= 0)
        return n;
    zn__counter_add(&c->g->stats->bytes_in, (uint64_t)n);
    zn_buf_init_borrowed(&tmp, scratch, (size_t)n, ZN__SCRATCH_SIZE);
    zn__conn_deliver(c, &tmp);
    /* Ends the borrow: what is left moves into owned storage, which then
     * becomes the connection's input buffer (empty before this read). */
    if (zn_buf_shrink(&tmp, 0) != 0) {
        zn_buf_free(&tmp);
        zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
        return n;
    }
    if (zn_buf_len(&tmp) > 0 && zn__buf_get(&c->in) == NULL) {
        zn_buf_free(&tmp);
        zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
        return n;
    }
    if (c->in != NULL)
        *c->in = tmp;
    return n;
}


static ssize_t
zn__conn_read_buffered(zn_conn_t *c, char *scratch)
{
    struct iovec iov[2];
    ssize_t n;
    int cnt, rc;

    if ((cnt = zn_buf_read_begin(c->in, iov, scratch, ZN__SCRATCH_SIZE)) < 0)
        return cnt;
    if ((n = c->g->tp->readv(c, iov, cnt)) <= 0)
        return n;
    if ((rc = zn_buf_read_end(c->in, iov, cnt, (size_t)n)) != 0)
        return rc;
    zn__counter_add(&c->g->stats->bytes_in, (uint64_t)n);
    zn__conn_deliver(c, c->in);
    if (c->in != NULL && zn_buf_len(c->in) == 0)
        zn__buf_drop(&c->in);
    return n;
}


/* The peer shut down its write side: the handler decides, or by default
 * the connection closes once its replies are flushed. */
static void
zn__conn_eof(zn_conn_t *c)
{
    c->eof = 1;
    if (c->g->h->on_eof == NULL) {
        zn__conn_close_loop(c, ZN_CLOSE_PEER, false);
        return;
    }
    c->in_cb++;
    c->g->h->on_eof(c, c->g->h->ud);
    c->in_cb--;
}


/*
 * Moves the server's total of input storage by what this connection's
 * storage did (from `before` to `after` bytes). Growth that takes the
 * total past the budget closes the connection (its storage is given back
 * when it finishes).
 */
static void
zn__conn_account_input(zn_conn_t *c, size_t before, size_t after)
{
    size_t total, budget = c->g->in_budget;

    if (c->g->in_held == NULL || after == before)
        return;
    if (after < before) {
        atomic_fetch_sub(c->g->in_held, before - after);
        return;
    }
    total = atomic_fetch_add(c->g->in_held, after - before) + (after - before);
    if (budget > 0 && total > budget &&
        atomic_load(&c->state) == ZN__OPEN) {
        ZN_LOG_RL(ZN_LOG_WARN, 10, "%s: unread input of all connections "
                  "over %zu bytes, closing this one", zn_conn_peer(c),
                  budget);
        zn__conn_close_loop(c, ZN_CLOSE_INPUT_BUDGET, true);
    }
}


static void
zn__conn_read(zn_conn_t *c)
{
    char *scratch = zn__loop_scratch(c->io.loop);
    size_t in_max = c->g->limits->in_max, before = zn__in_cap(c);
    ssize_t n;

    if (scratch == NULL) {
        zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
        return;
    }
    if (c->in == NULL)
        n = zn__conn_read_scratch(c, scratch);
    else
        n = zn__conn_read_buffered(c, scratch);
    if (n == 0)
        zn__conn_eof(c);
    else if (n > 0) {
        if (c->tm != NULL)
            c->tm->last_input = zn_loop_now(c->io.loop);
    } else if (n == ZN_ENOMEM)
        zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
    else if (n != ZN_EAGAIN)
        zn__conn_close_loop(c, ZN_CLOSE_ERROR, true);
    if (in_max > 0 && zn__in_len(c) > in_max &&
        atomic_load(&c->state) == ZN__OPEN) {
        ZN_LOG_RL(ZN_LOG_WARN, 10, "%s: over %zu bytes of unread input, "
                  "closing", zn_conn_peer(c), in_max);
        zn__conn_close_loop(c, ZN_CLOSE_INPUT_CAP, true);
    }
    zn__conn_account_input(c, before, zn__in_cap(c));
}


/* The loop holds a reference across the callbacks, so a handler may close
 * (and the last user drop) the connection while it runs. */
static void
zn__conn_io_cb(zn_io_t *io, unsigned events, void *ud)
{
    zn_conn_t *c = ud;

    (void)io;
    zn_conn_ref(c);
    /* A transport that remaps the events (TLS) may need this event to go
     * on with a read or a write whatever its direction: try what is
     * wanted. */
    if (c->g->tp->events != NULL
            ? (zn__conn_wanted(c) & ZN_EV_READABLE) != 0
            : (events & ZN_EV_READABLE) && (c->io.events & ZN_EV_READABLE))
        zn__conn_read(c);
    if ((events & ZN_EV_WRITABLE) || zn__out_len(c) > 0)
        zn__conn_flush(c);
    else
        zn__conn_update_io(c);
    zn_conn_unref(c);
}


/* When the timer must fire next while open: the earlier of the idle
 * expiry and the deadline; UINT64_MAX for never. */
static uint64_t
zn__conn_next_due(const zn_conn_t *c)
{
    uint64_t idle = c->g->limits->idle_ms, due = UINT64_MAX;

    if (c->tm == NULL || c->tm->paused_since != 0)
        return due;
    if (idle > 0 && c->idle_holds == 0)
        due = c->tm->last_input + idle;
    if (c->tm->deadline > 0 && c->tm->deadline < due)
        due = c->tm->deadline;
    return due;
}


/*
 * The idle time-out and the deadline measure the peer's slowness, so they
 * stop while we do not read (paused by the high-water mark or by the
 * user): a peer that is slow to read its replies is not a peer that is
 * slow to send. On resume the deadline moves by the time spent paused, and
 * the idle clock starts again.
 */
static void
zn__conn_pause_clock(zn_conn_t *c, bool reading)
{
    uint64_t now = zn_loop_now(c->io.loop);
    zn__conn_timer_t *tm = c->tm;

    if (!reading && tm->paused_since == 0 &&
        atomic_load_explicit(&c->state, memory_order_relaxed) == ZN__OPEN) {
        tm->paused_since = now ? now : 1;
    } else if (reading && tm->paused_since != 0) {
        if (tm->deadline > 0 && tm->deadline != UINT64_MAX)
            tm->deadline += now - tm->paused_since;
        tm->last_input = now;
        tm->paused_since = 0;
        zn__conn_arm(c);
    }
}


/* Moves the timer only if it must fire earlier than it will; a timer that
 * fires early finds nothing due and re-arms itself. */
static void
zn__conn_arm(zn_conn_t *c)
{
    uint64_t due = zn__conn_next_due(c), now = zn_loop_now(c->io.loop);

    if (due == UINT64_MAX ||
        atomic_load_explicit(&c->state, memory_order_relaxed) != ZN__OPEN)
        return;
    if (zn_timer_active(&c->tm->t) && c->tm->t.due <= due)
        return;
    zn_timer_start(&c->tm->t, due > now ? due - now : 0, 0);
}


void
zn_conn_set_deadline(zn_conn_t *c, uint64_t ms)
{
    uint64_t now = zn_loop_now(c->io.loop);

    if (ms == 0) {
        if (c->tm != NULL)
            c->tm->deadline = 0;
        return;
    }
    if (zn__conn_tm(c) == NULL) {
        zn__conn_close_loop(c, ZN_CLOSE_NOMEM, true);
        return;
    }
    c->tm->deadline = ms > UINT64_MAX - now ? UINT64_MAX : now + ms;
    zn__conn_arm(c);
}


/* One timer per connection serves the idle time-out and the deadline
 * while open, and the linger bound of a graceful close. It is re-armed
 * lazily: input only moves last_input; the timer checks when it fires. */
static void
zn__conn_timer_cb(zn_timer_t *t, void *ud)
{
    zn_conn_t *c = ud;
    uint64_t now = zn_loop_now(c->io.loop), idle = c->g->limits->idle_ms;
    int st = atomic_load_explicit(&c->state, memory_order_relaxed);

    (void)t;
    if (st == ZN__CLOSING) {
        zn__conn_close_loop(c, (zn_close_reason_t)c->reason, true);
        return;
    }
    if (st != ZN__OPEN || c->tm->paused_since != 0)
        return;
    if (c->tm->deadline > 0 && now >= c->tm->deadline) {
        ZN_LOG_RL(ZN_LOG_WARN, 10, "%s: deadline passed, closing",
                  zn_conn_peer(c));
        zn__conn_close_loop(c, ZN_CLOSE_DEADLINE, true);
        return;
    }
    if (idle > 0 && c->idle_holds == 0 && now - c->tm->last_input >= idle) {
        ZN_LOG_RL(ZN_LOG_INFO, 10, "%s: idle for %llu ms, closing",
                  zn_conn_peer(c), (unsigned long long)idle);
        zn__conn_close_loop(c, ZN_CLOSE_IDLE, false);
        return;
    }
    zn__conn_arm(c);
}


void
zn__conn_idle_hold(zn_conn_t *c)
{
    c->idle_holds++;
}


void
zn__conn_idle_release(zn_conn_t *c)
{
    if (c->idle_holds == 0 || --c->idle_holds > 0 || c->tm == NULL)
        return;
    c->tm->last_input = zn_loop_now(c->io.loop);
    zn__conn_arm(c);
}


void
zn_conn_pause_read(zn_conn_t *c)
{
    c->paused_user = 1;
    zn__conn_update_io(c);
}


void
zn_conn_resume_read(zn_conn_t *c)
{
    c->paused_user = 0;
    zn__conn_update_io(c);
}
