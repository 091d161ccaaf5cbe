/*
 * rpc.c: the RPC client of protocol v1 (include/znet/rpc.h).
 *
 * One zn_client_t carries the connection; this file is its handler. Every
 * call gets a 32-bit seq (never 0, never one still outstanding), sits in a
 * map seq -> call while it is outstanding, and in exactly one of two FIFO
 * lists: `queued` (packed, not yet written: the client is connecting or
 * waiting to reconnect) or `sent` (written on the current connection).
 * A drop fails `sent` with ZN_ECONNRESET; `queued` waits for the next
 * connection, or fails with ZN_ENOTCONN once the client gives up.
 *
 * Deadlines: each call embeds its own zn_timer_t. The loop keeps timers in
 * a heap, so starting and stopping one costs O(log n) with n the number of
 * timers of the loop; a deadline-ordered list of our own would only save
 * that for calls sharing one time-out, at the price of a second structure.
 *
 * Threads: everything runs on the loop thread except zn_rpc_call(),
 * zn_rpc_send_oneway(), zn_rpc_call_sync(), zn_rpc_connected() and
 * zn_rpc_stats(). From another thread a call is packed by the caller and
 * posted to the loop, which assigns the seq and patches it into the frame.
 *
 * Lifetime: the client struct is reference counted. The user holds one
 * reference until zn_rpc_free(), an open connection one (its on_close
 * still has to run), and each posted task one. The memory goes with the
 * last; by then no call is left.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <znet/znet.pb-c.h>

#include "idmap.h"
#include "internal.h"
#include "msg/msg_int.h"
#include "znet/log.h"
#include "znet/rpc.h"

#define ZN__RPC_TIMEOUT_DEFAULT 30000u
#define ZN__RPC_PENDING_DEFAULT 65536u
#define ZN__RPC_TIMEOUT_MAX ((uint64_t)1 << 40) /* about 35 years */
/* Frames up to this size are packed on the stack when they can be sent at
 * once (the connection copies them). */
#define ZN__RPC_STACK_FRAME 2048
#define ZN__RPC_SYNC_GRACE_MS 1000u
#define ZN__RPC_ERRMSG_MAX 256

typedef struct zn__rpc_call_s zn__rpc_call_t;

typedef struct {
    zn__rpc_call_t *first, *last;
} zn__rpc_list_t;

struct zn__rpc_call_s {
    zn_rpc_t *r;
    zn__rpc_call_t *prev, *next;
    zn__rpc_list_t *list; /* r->queued, r->sent, or NULL */
    zn_timer_t timer;     /* the deadline */
    const ProtobufCMessageDescriptor *rsp_type;
    zn_rpc_cb cb; /* NULL: a posted one-way request */
    void *ud;
    uint8_t *frame; /* the packed request while not written */
    size_t frame_len;
    uint64_t timeout_ms;
    uint32_t cmd;
    uint32_t seq; /* 0 until registered */
    bool sync;    /* the response is handed over, not freed */
};

typedef struct {
    _Atomic uint64_t calls, ok, errors, timeouts, failed, late, pushes;
    _Atomic uint64_t outstanding;
} zn__rpc_stats_t;

struct zn_rpc_s {
    zn_loop_t *loop;
    zn_client_t *cl;
    zn_conn_t *conn; /* between on_connect and on_close */
    zn_rpc_opts_t o;
    void (*user_give_up)(zn_client_t *cl, int status, void *ud);
    zn__idmap_t map; /* seq -> outstanding call */
    zn__rpc_list_t queued;
    zn__rpc_list_t sent;
    uint32_t next_seq;
    bool dead;  /* gave up: no connection will come */
    bool freed; /* zn_rpc_free() ran */
    _Atomic bool connected;
    _Atomic unsigned refs;
    _Atomic unsigned posted; /* calls posted from other threads, not run */
    zn__rpc_stats_t st;
};

/* What zn_rpc_call_sync() waits on. Shared by the caller and the call's
 * callback, freed by the last of them (the caller may stop waiting). */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    bool done;
    int status;
    ProtobufCMessage *rsp;
    uint32_t code;
    char msg[ZN__RPC_ERRMSG_MAX];
} zn__rpc_waiter_t;


/* ---- allocation for messages that outlive a callback ----------------- */


static void *
zn__rpc_pc_alloc(void *data, size_t size)
{
    (void)data;
    return zn__malloc(size);
}


static void
zn__rpc_pc_free(void *data, void *p)
{
    (void)data;
    zn__free(p);
}


static ProtobufCAllocator zn__rpc_allocator = {zn__rpc_pc_alloc,
                                               zn__rpc_pc_free, NULL};


void
zn_rpc_msg_free(ProtobufCMessage *msg)
{
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, &zn__rpc_allocator);
}


/* ---- small helpers ---------------------------------------------------- */


static void
zn__rpc_list_push(zn__rpc_list_t *l, zn__rpc_call_t *call)
{
    call->list = l;
    call->next = NULL;
    call->prev = l->last;
    if (l->last != NULL)
        l->last->next = call;
    else
        l->first = call;
    l->last = call;
}


static void
zn__rpc_list_remove(zn__rpc_call_t *call)
{
    zn__rpc_list_t *l = call->list;

    if (l == NULL)
        return;
    if (call->prev != NULL)
        call->prev->next = call->next;
    else
        l->first = call->next;
    if (call->next != NULL)
        call->next->prev = call->prev;
    else
        l->last = call->prev;
    call->list = NULL;
    call->prev = call->next = NULL;
}


static void
zn__rpc_hold(zn_rpc_t *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}


static void
zn__rpc_release(zn_rpc_t *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    zn__free(r->map.slots);
    zn__free(r);
}


static void
zn__rpc_count(_Atomic uint64_t *c, int64_t n)
{
    zn__counter_add(c, (uint64_t)n);
}


/* The body size of `msg` (packing is service.c's, written once); 0 or
 * ZN_EMSGSIZE if a frame cannot carry it. */
static int
zn__rpc_body_size(const ProtobufCMessage *msg, size_t *body)
{
    return zn__msg_frame_size(msg, body) != 0 ? 0 : ZN_EMSGSIZE;
}


static bool
zn__rpc_can_send(const zn_rpc_t *r)
{
    return r->conn != NULL && zn_conn_is_open(r->conn);
}


/* ---- the life of a call ----------------------------------------------- */


static void zn__rpc_timeout_cb(zn_timer_t *t, void *ud);


/* Whether a new call can start now; the error it gets otherwise. */
static int
zn__rpc_check(const zn_rpc_t *r)
{
    if (r->freed)
        return ZN_ECANCELED;
    if (r->dead)
        return ZN_ENOTCONN;
    if (zn__counter_get(&r->st.outstanding) >= r->o.max_pending)
        return ZN_ENOBUFS;
    return 0;
}


/* The next seq: skips 0 and seqs still outstanding (there are fewer of
 * those than 2^32 - 1, so the search ends). */
static uint32_t
zn__rpc_next_seq(zn_rpc_t *r)
{
    do
        r->next_seq++;
    while (r->next_seq == 0 || zn__idmap_get(&r->map, r->next_seq) != NULL);
    return r->next_seq;
}


/* Makes a call outstanding: a seq in the map, a running deadline. */
static int
zn__rpc_register(zn_rpc_t *r, zn__rpc_call_t *call)
{
    uint32_t seq = zn__rpc_next_seq(r);

    if (zn__idmap_put(&r->map, seq, call) != 0)
        return ZN_ENOMEM;
    call->seq = seq;
    zn_timer_init(r->loop, &call->timer, zn__rpc_timeout_cb, call);
    zn_timer_start(&call->timer, call->timeout_ms, 0);
    zn__rpc_count(&r->st.calls, 1);
    zn__rpc_count(&r->st.outstanding, 1);
    return 0;
}


/* Takes a call out of every structure (map, list, timer) and drops its
 * packed frame; what is left is to run its callback. */
static void
zn__rpc_detach(zn_rpc_t *r, zn__rpc_call_t *call)
{
    if (call->seq != 0) {
        zn__idmap_del(&r->map, call->seq);
        zn_timer_stop(&call->timer);
        zn__rpc_count(&r->st.outstanding, -1);
    }
    zn__rpc_list_remove(call);
    zn__free(call->frame);
    call->frame = NULL;
}


/*
 * Runs a detached call's callback and frees the call. Counts first and
 * touches nothing of `r` after the callback, which may free the client.
 */
static void
zn__rpc_complete(zn_rpc_t *r, zn__rpc_call_t *call, int status,
                 const ProtobufCMessage *rsp, const zn_rpc_error_t *err)
{
    switch (status) {
    case 0:
        zn__rpc_count(&r->st.ok, 1);
        break;
    case ZN_EPROTO:
    case ZN_EBADMSG:
        zn__rpc_count(&r->st.errors, 1);
        break;
    case ZN_ETIMEDOUT:
        zn__rpc_count(&r->st.timeouts, 1);
        break;
    default:
        zn__rpc_count(&r->st.failed, 1);
        break;
    }
    call->cb(status, rsp, err, call->ud);
    zn__free(call);
}


/*
 * Fails every call of a list with `status`. The list is detached first,
 * so that callbacks starting new calls (or freeing the client) do not see
 * it change under the walk; a reference keeps `r` until the walk ends.
 */
static void
zn__rpc_fail_list(zn_rpc_t *r, zn__rpc_list_t *l, int status)
{
    zn__rpc_call_t *call, *next, *first = l->first;

    if (first == NULL)
        return;
    for (call = first; call != NULL; call = call->next) {
        call->list = NULL;
        if (call->seq != 0) {
            zn__idmap_del(&r->map, call->seq);
            zn_timer_stop(&call->timer);
            zn__rpc_count(&r->st.outstanding, -1);
            call->seq = 0;
        }
    }
    l->first = l->last = NULL;
    zn__rpc_hold(r);
    for (call = first; call != NULL; call = next) {
        next = call->next;
        zn__free(call->frame);
        call->frame = NULL;
        zn__rpc_complete(r, call, status, NULL, NULL);
    }
    zn__rpc_release(r);
}


static void
zn__rpc_timeout_cb(zn_timer_t *t, void *ud)
{
    zn__rpc_call_t *call = ud;
    zn_rpc_t *r = call->r;

    (void)t;
    zn__rpc_detach(r, call);
    zn__rpc_complete(r, call, ZN_ETIMEDOUT, NULL, NULL);
}


/*
 * Writes a registered call's frame if connected, else keeps it in the
 * queue for the next connection. `frame` is the caller's unless `owned`
 * (then it is freed or kept here). Returns 0 or ZN_ENOMEM (nothing kept).
 */
static int
zn__rpc_transmit(zn_rpc_t *r, zn__rpc_call_t *call, uint8_t *frame, size_t len,
                 bool owned)
{
    int rc;

    if (zn__rpc_can_send(r)) {
        rc = zn_conn_send(r->conn, frame, len);
        if (rc == 0) {
            if (owned)
                zn__free(frame);
            zn__rpc_list_push(&r->sent, call);
            return 0;
        }
        if (rc == ZN_ENOMEM)
            goto fail;
    }
    if (!owned) {
        uint8_t *copy = zn__malloc(len);

        if (copy == NULL)
            goto fail;
        frame = memcpy(copy, frame, len);
    }
    call->frame = frame;
    call->frame_len = len;
    zn__rpc_list_push(&r->queued, call);
    return 0;

fail:
    if (owned)
        zn__free(frame);
    return ZN_ENOMEM;
}


/* Writes the queued calls, in order, on a new connection. */
static void
zn__rpc_flush_queue(zn_rpc_t *r)
{
    zn__rpc_call_t *call;
    int rc;

    while ((call = r->queued.first) != NULL && zn__rpc_can_send(r)) {
        if ((rc = zn_conn_send(r->conn, call->frame, call->frame_len)) != 0) {
            /* Out of memory (or closed): the calls still queued fail now
             * rather than wait for their deadlines. */
            zn__rpc_fail_list(r, &r->queued, rc);
            return;
        }
        zn__rpc_list_remove(call);
        zn__free(call->frame);
        call->frame = NULL;
        zn__rpc_list_push(&r->sent, call);
    }
}


/* A call not yet registered: no seq, no deadline running, no frame. */
static zn__rpc_call_t *
zn__rpc_call_new(zn_rpc_t *r, uint32_t cmd,
                 const ProtobufCMessageDescriptor *rsp_type,
                 uint64_t timeout_ms, zn_rpc_cb cb, void *ud)
{
    zn__rpc_call_t *call = zn__calloc(1, sizeof(*call));

    if (call == NULL)
        return NULL;
    if (timeout_ms == 0)
        timeout_ms = r->o.timeout_ms;
    if (timeout_ms > ZN__RPC_TIMEOUT_MAX)
        timeout_ms = ZN__RPC_TIMEOUT_MAX;
    call->r = r;
    call->cmd = cmd;
    call->rsp_type = rsp_type;
    call->timeout_ms = timeout_ms;
    call->cb = cb;
    call->ud = ud;
    return call;
}


/* ---- responses -------------------------------------------------------- */


/*
 * A response body, decoded under the depth limit and the allocation
 * budget. For a blocking caller, who keeps the message after the callback,
 * the bytes (now known to be safe) are decoded a second time with the
 * plain allocator, so that zn_rpc_msg_free() needs no allocator state.
 */
static void
zn__rpc_deliver(zn_rpc_t *r, zn__rpc_call_t *call, const zn_frame_t *f)
{
    zn__pb_opts_t po = {r->o.max_depth, 0, NULL, 0};
    ProtobufCMessage *m, *kept = NULL;
    zn__pb_alloc_t a;
    int rc;

    rc = zn__pb_unpack(call->rsp_type, f->body, f->hdr.length, &po, &m, &a);
    if (rc != 0) {
        ZN_LOG_RL(ZN_LOG_WARN, 5, "rpc: cmd %u seq %u: response: %s",
                  (unsigned)call->cmd, (unsigned)call->seq,
                  zn__pb_err_reason(rc));
        zn__rpc_complete(r, call, rc == ZN_ENOMEM ? rc : ZN_EBADMSG, NULL,
                         NULL);
        return;
    }
    if (call->sync) {
        kept = protobuf_c_message_unpack(call->rsp_type, &zn__rpc_allocator,
                                         f->hdr.length, f->body);
        zn__pb_free(m, &a);
        m = NULL;
        if (kept == NULL) {
            zn__rpc_complete(r, call, ZN_ENOMEM, NULL, NULL);
            return;
        }
    }
    zn__rpc_complete(r, call, 0, kept != NULL ? kept : m, NULL);
    zn__pb_free(m, &a);
}


/* An error response: its znet.Error goes to the callback. */
static void
zn__rpc_deliver_error(zn_rpc_t *r, zn__rpc_call_t *call, const zn_frame_t *f)
{
    zn__pb_opts_t po = {r->o.max_depth, 0, NULL, 0};
    ProtobufCMessage *m;
    zn_rpc_error_t err;
    zn__pb_alloc_t a;
    Znet__Error *e;

    int rc;

    rc = zn__pb_unpack(&znet__error__descriptor, f->body, f->hdr.length, &po,
                       &m, &a);
    if (rc != 0) { /* out of memory is ours, not the server's fault */
        zn__rpc_complete(r, call, rc == ZN_ENOMEM ? ZN_ENOMEM : ZN_EBADMSG,
                         NULL, NULL);
        return;
    }
    e = (Znet__Error *)m;
    err.code = e->code;
    err.message = e->message != NULL ? e->message : "";
    zn__rpc_complete(r, call, ZN_EPROTO, NULL, &err);
    zn__pb_free(m, &a);
}


/*
 * One complete frame from the server. A response must match an
 * outstanding call written on this connection, by seq and cmd; anything
 * else is late (timed out) or unsolicited, and is dropped and counted.
 */
static void
zn__rpc_frame(zn_rpc_t *r, const zn_frame_t *f)
{
    zn__rpc_call_t *call;

    if (!zn_frame_is_response(&f->hdr)) {
        zn__rpc_count(&r->st.pushes, 1);
        if (r->o.on_push != NULL)
            r->o.on_push(r, f->hdr.cmd, f->body, f->hdr.length, r->o.ud);
        return;
    }
    call = zn__idmap_get(&r->map, f->hdr.seq);
    if (call == NULL || call->list != &r->sent || call->cmd != f->hdr.cmd) {
        zn__rpc_count(&r->st.late, 1);
        ZN_LOG_RL(ZN_LOG_DEBUG, 5, "rpc: dropped a response, cmd %u seq %u",
                  (unsigned)f->hdr.cmd, (unsigned)f->hdr.seq);
        return;
    }
    zn__rpc_detach(r, call);
    if (zn_frame_is_error(&f->hdr))
        zn__rpc_deliver_error(r, call, f);
    else
        zn__rpc_deliver(r, call, f);
}


/* ---- the connection's handler ----------------------------------------- */


static void
zn__rpc_on_connect(zn_conn_t *c, void *ud)
{
    zn_rpc_t *r = ud;

    zn__rpc_hold(r);
    r->conn = c;
    atomic_store_explicit(&r->connected, true, memory_order_release);
    zn__rpc_flush_queue(r);
    if (r->o.on_state != NULL && !r->freed)
        r->o.on_state(r, true, r->o.ud);
}


/*
 * Decodes every complete frame. A bad header means the stream cannot be
 * trusted past it: the connection is closed (its on_close fails the calls
 * that were written on it).
 */
static void
zn__rpc_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    zn_rpc_t *r = ud;
    zn_frame_reason_t why;
    zn_frame_t f;
    int rc;

    for (;;) {
        rc = zn_frame_next(zn_buf_peek(in), zn_buf_len(in), r->o.max_body, &f,
                           &why);
        if (rc == ZN_EAGAIN)
            return;
        if (rc != 0) {
            ZN_LOG(ZN_LOG_WARN, "rpc: %s: %s, closing", zn_conn_peer(c),
                   zn_frame_reason_name(why));
            zn_conn_close_reason(c, ZN_CLOSE_PROTOCOL, true);
            break;
        }
        zn__rpc_frame(r, &f);
        zn_buf_consume(in, f.size);
        if (r->freed || !zn_conn_is_open(c))
            break;
    }
    zn_buf_consume(in, zn_buf_len(in));
}


/*
 * The calls written on the lost connection can never be answered: they
 * fail. Queued ones wait for the client's next attempt, unless none will
 * come (no reconnect). The connection's reference on `r` goes last.
 */
static void
zn__rpc_on_close(zn_conn_t *c, zn_close_reason_t reason, void *ud)
{
    zn_rpc_t *r = ud;

    (void)c;
    (void)reason;
    r->conn = NULL;
    atomic_store_explicit(&r->connected, false, memory_order_release);
    if (!r->o.client.reconnect)
        r->dead = true;
    zn__rpc_fail_list(r, &r->sent, ZN_ECONNRESET);
    if (r->dead)
        zn__rpc_fail_list(r, &r->queued, ZN_ENOTCONN);
    if (r->o.on_state != NULL && !r->freed)
        r->o.on_state(r, false, r->o.ud);
    zn__rpc_release(r);
}


/* The client stopped trying: nothing queued can ever be written, and
 * calls from now on are refused with ZN_ENOTCONN. */
static void
zn__rpc_on_give_up(zn_client_t *cl, int status, void *ud)
{
    zn_rpc_t *r = ud;

    r->dead = true;
    zn__rpc_hold(r);
    zn__rpc_fail_list(r, &r->queued, ZN_ENOTCONN);
    if (r->user_give_up != NULL && !r->freed)
        r->user_give_up(cl, status, r->o.ud);
    zn__rpc_release(r);
}


/* ---- creating and freeing --------------------------------------------- */


void
zn_rpc_opts_default(zn_rpc_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    zn_client_opts_default(&o->client);
    o->max_body = ZN_FRAME_MAX_BODY_DEFAULT;
    o->timeout_ms = ZN__RPC_TIMEOUT_DEFAULT;
    o->max_pending = ZN__RPC_PENDING_DEFAULT;
    o->max_depth = ZN__PB_DEPTH_DEFAULT;
}


static void
zn__rpc_fill_defaults(zn_rpc_opts_t *o)
{
    if (o->max_body == 0)
        o->max_body = ZN_FRAME_MAX_BODY_DEFAULT;
    if (o->timeout_ms == 0)
        o->timeout_ms = ZN__RPC_TIMEOUT_DEFAULT;
    if (o->max_pending == 0)
        o->max_pending = ZN__RPC_PENDING_DEFAULT;
    if (o->max_depth == 0)
        o->max_depth = ZN__PB_DEPTH_DEFAULT;
}


/*
 * The client is created with our handler (its input bound raised to hold
 * the largest response frame) and started last: a loopback
 * connect may complete (and a failure give up) inside zn_client_start(),
 * so everything it may call back into must be ready.
 */
int
zn_rpc_new(zn_loop_t *loop, const zn_rpc_opts_t *o, zn_rpc_t **out)
{
    zn_client_opts_t co;
    zn_rpc_t *r;
    int rc;

    if (loop == NULL || o == NULL || out == NULL ||
        o->max_depth > ZN__PB_DEPTH_MAX)
        return ZN_EINVAL;
    if ((r = zn__calloc(1, sizeof(*r))) == NULL)
        return ZN_ENOMEM;
    r->loop = loop;
    r->o = *o;
    r->o.client.host = NULL;
    zn__rpc_fill_defaults(&r->o);
    r->user_give_up = o->client.on_give_up;
    atomic_init(&r->refs, 1);
    co = o->client;
    memset(&co.handler, 0, sizeof(co.handler));
    co.handler.on_connect = zn__rpc_on_connect;
    co.handler.on_data = zn__rpc_on_data;
    co.handler.on_close = zn__rpc_on_close;
    co.handler.ud = r;
    co.on_give_up = zn__rpc_on_give_up;
    if (co.limits.in_max != 0 &&
        co.limits.in_max < (size_t)r->o.max_body + ZN_FRAME_HEADER_SIZE)
        co.limits.in_max = (size_t)r->o.max_body + ZN_FRAME_HEADER_SIZE;
    if ((rc = zn_client_new(loop, &co, &r->cl)) != 0) {
        zn__free(r);
        return rc;
    }
    *out = r;
    (void)zn_client_start(r->cl);
    return 0;
}


/*
 * Stopping the client closes the connection at once (abortive), but its
 * on_close runs later, from a posted task: the connection's reference
 * keeps the struct until then. Outstanding calls fail here.
 */
void
zn_rpc_free(zn_rpc_t *r)
{
    if (r == NULL || r->freed)
        return;
    r->freed = true;
    atomic_store_explicit(&r->connected, false, memory_order_release);
    zn_client_free(r->cl);
    r->cl = NULL;
    zn__rpc_fail_list(r, &r->queued, ZN_ECANCELED);
    zn__rpc_fail_list(r, &r->sent, ZN_ECANCELED);
    zn__rpc_release(r);
}


bool
zn_rpc_connected(const zn_rpc_t *r)
{
    return atomic_load_explicit(&((zn_rpc_t *)r)->connected,
                                memory_order_acquire);
}


void
zn_rpc_stats(const zn_rpc_t *r, zn_rpc_stats_t *st)
{
    const zn__rpc_stats_t *s = &r->st;

    st->calls = zn__counter_get(&s->calls);
    st->ok = zn__counter_get(&s->ok);
    st->errors = zn__counter_get(&s->errors);
    st->timeouts = zn__counter_get(&s->timeouts);
    st->failed = zn__counter_get(&s->failed);
    st->late_responses = zn__counter_get(&s->late);
    st->pushes = zn__counter_get(&s->pushes);
    st->outstanding = zn__counter_get(&s->outstanding);
}


/* ---- calls on the loop thread ----------------------------------------- */


/*
 * A call from the loop thread. When it can be written at once, a small
 * frame is packed on the stack and copied only by the connection; a frame
 * that must wait in the queue is packed into memory of its own.
 */
static int
zn__rpc_call_here(zn_rpc_t *r, uint32_t cmd, const ProtobufCMessage *req,
                  zn__rpc_call_t *call, size_t body)
{
    uint8_t stack[ZN__RPC_STACK_FRAME], *frame = stack;
    size_t len = ZN_FRAME_HEADER_SIZE + body;
    bool owned = len > sizeof(stack) || !zn__rpc_can_send(r);
    int rc;

    if (owned && (frame = zn__malloc(len)) == NULL)
        return ZN_ENOMEM;
    if ((rc = zn__rpc_register(r, call)) != 0) {
        if (owned)
            zn__free(frame);
        return rc;
    }
    zn__msg_pack_into(frame, cmd, call->seq, 0, req, body);
    if ((rc = zn__rpc_transmit(r, call, frame, len, owned)) != 0) {
        zn__rpc_detach(r, call);
        zn__rpc_count(&r->st.calls, -1);
    }
    return rc;
}


/* ---- calls from other threads ----------------------------------------- */


/* A one-way request posted from another thread: written if there is a
 * connection by now, else dropped (there is no callback to tell). */
static void
zn__rpc_oneway_task(zn_rpc_t *r, zn__rpc_call_t *call)
{
    if (!r->freed && zn__rpc_can_send(r))
        (void)zn_conn_send(r->conn, call->frame, call->frame_len);
    zn__free(call->frame);
    zn__free(call);
}


/*
 * A call posted from another thread, now on the loop: it gets its seq
 * here, patched into the frame the caller packed. What zn_rpc_call()
 * returns on the loop thread reaches the callback instead.
 */
static void
zn__rpc_task(void *ud)
{
    zn__rpc_call_t *call = ud;
    zn_rpc_t *r = call->r;
    uint8_t *frame = call->frame;
    int rc;

    atomic_fetch_sub_explicit(&r->posted, 1, memory_order_relaxed);
    if (call->cb == NULL) {
        zn__rpc_oneway_task(r, call);
        zn__rpc_release(r);
        return;
    }
    call->frame = NULL;
    rc = zn__rpc_check(r);
    if (rc == 0 && (rc = zn__rpc_register(r, call)) == 0) {
        zn_frame_set_seq(frame, call->seq);
        if ((rc = zn__rpc_transmit(r, call, frame, call->frame_len, true)) ==
            0) {
            zn__rpc_release(r);
            return;
        }
        frame = NULL;
        zn__rpc_detach(r, call);
    }
    zn__free(frame);
    zn__rpc_complete(r, call, rc, NULL, NULL);
    zn__rpc_release(r);
}


/* Packs the request in the caller's thread and posts it to the loop. */
static int
zn__rpc_post(zn_rpc_t *r, zn__rpc_call_t *call, const ProtobufCMessage *req,
             size_t body, uint8_t flags)
{
    size_t len = ZN_FRAME_HEADER_SIZE + body;

    if ((call->frame = zn__malloc(len)) == NULL) {
        zn__free(call);
        return ZN_ENOMEM;
    }
    zn__msg_pack_into(call->frame, call->cmd, 0, flags, req, body);
    call->frame_len = len;
    zn__rpc_hold(r);
    atomic_fetch_add_explicit(&r->posted, 1, memory_order_relaxed);
    if (zn_loop_post(r->loop, zn__rpc_task, call) != 0) {
        atomic_fetch_sub_explicit(&r->posted, 1, memory_order_relaxed);
        zn__rpc_release(r);
        zn__free(call->frame);
        zn__free(call);
        return ZN_ENOMEM;
    }
    return 0;
}


/* The posted calls count against max_pending too, so that a thread that
 * calls faster than the loop answers is refused instead of queuing
 * without bound. */
static bool
zn__rpc_post_full(const zn_rpc_t *r)
{
    uint64_t n =
        zn__counter_get(&r->st.outstanding) +
        atomic_load_explicit(&((zn_rpc_t *)r)->posted, memory_order_relaxed);

    return n >= r->o.max_pending;
}


static int
zn__rpc_call_ex(zn_rpc_t *r, uint32_t cmd, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *rsp_type, uint64_t timeout_ms,
                zn_rpc_cb cb, void *ud, bool sync)
{
    zn__rpc_call_t *call;
    bool here = zn_loop_in_thread(r->loop);
    size_t body;
    int rc;

    if ((rc = zn__rpc_body_size(req, &body)) != 0)
        return rc;
    if (here && (rc = zn__rpc_check(r)) != 0)
        return rc;
    if (!here && zn__rpc_post_full(r))
        return ZN_ENOBUFS;
    call = zn__rpc_call_new(r, cmd, rsp_type, timeout_ms, cb, ud);
    if (call == NULL)
        return ZN_ENOMEM;
    call->sync = sync;
    if (!here)
        return zn__rpc_post(r, call, req, body, 0);
    if ((rc = zn__rpc_call_here(r, cmd, req, call, body)) != 0)
        zn__free(call);
    return rc;
}


int
zn_rpc_call(zn_rpc_t *r, uint32_t cmd, const ProtobufCMessage *req,
            const ProtobufCMessageDescriptor *rsp_type, uint64_t timeout_ms,
            zn_rpc_cb cb, void *ud)
{
    if (r == NULL || req == NULL || rsp_type == NULL || cb == NULL)
        return ZN_EINVAL;
    return zn__rpc_call_ex(r, cmd, req, rsp_type, timeout_ms, cb, ud, false);
}


int
zn_rpc_send_oneway(zn_rpc_t *r, uint32_t cmd, const ProtobufCMessage *req)
{
    uint8_t stack[ZN__RPC_STACK_FRAME], *frame = stack;
    zn__rpc_call_t *call;
    size_t body, len;
    int rc;

    if (r == NULL || req == NULL)
        return ZN_EINVAL;
    if ((rc = zn__rpc_body_size(req, &body)) != 0)
        return rc;
    if (!zn_rpc_connected(r))
        return ZN_ENOTCONN;
    len = ZN_FRAME_HEADER_SIZE + body;
    if (!zn_loop_in_thread(r->loop)) {
        if ((call = zn__rpc_call_new(r, cmd, NULL, 0, NULL, NULL)) == NULL)
            return ZN_ENOMEM;
        return zn__rpc_post(r, call, req, body, ZN_FRAME_F_ONEWAY);
    }
    if (len > sizeof(stack) && (frame = zn__malloc(len)) == NULL)
        return ZN_ENOMEM;
    zn__msg_pack_into(frame, cmd, 0, ZN_FRAME_F_ONEWAY, req, body);
    rc = zn__rpc_can_send(r) ? zn_conn_send(r->conn, frame, len) : ZN_ENOTCONN;
    if (frame != stack)
        zn__free(frame);
    return rc;
}


/* ---- the blocking helper ---------------------------------------------- */


static zn__rpc_waiter_t *
zn__rpc_waiter_new(void)
{
    zn__rpc_waiter_t *w = zn__calloc(1, sizeof(*w));
    pthread_condattr_t ca;

    if (w == NULL)
        return NULL;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->refs = 2;
    return w;
}


/* Drops one of the two references (the caller's, the callback's). Called
 * with w->mu held; unlocks it. */
static void
zn__rpc_waiter_put(zn__rpc_waiter_t *w)
{
    bool last = --w->refs == 0;

    pthread_mutex_unlock(&w->mu);
    if (!last)
        return;
    zn_rpc_msg_free(w->rsp);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    zn__free(w);
}


/* The callback of a blocking call, on the loop: hands the outcome (and the
 * response, decoded with the plain allocator) to the waiting thread. */
static void
zn__rpc_sync_cb(int status, const ProtobufCMessage *rsp,
                const zn_rpc_error_t *err, void *ud)
{
    zn__rpc_waiter_t *w = ud;

    pthread_mutex_lock(&w->mu);
    w->status = status;
    w->rsp = (ProtobufCMessage *)rsp;
    if (err != NULL) {
        w->code = err->code;
        snprintf(w->msg, sizeof(w->msg), "%s", err->message);
    }
    w->done = true;
    pthread_cond_signal(&w->cv);
    zn__rpc_waiter_put(w);
}


/*
 * Waits for the outcome, at most the call's deadline plus a grace: if the
 * loop stops answering (stopped, or stuck), the caller gets ZN_ETIMEDOUT
 * instead of hanging, and the waiter stays for the callback to free.
 */
static int
zn__rpc_wait(zn__rpc_waiter_t *w, uint64_t ms, ProtobufCMessage **rsp_out,
             uint32_t *err_out, char *errbuf, size_t errlen)
{
    struct timespec ts;
    uint64_t ns;
    int rc;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ns = (uint64_t)ts.tv_nsec + (ms % 1000) * 1000000u;
    ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT)
            break;
    if (!w->done) {
        zn__rpc_waiter_put(w);
        return ZN_ETIMEDOUT;
    }
    rc = w->status;
    *rsp_out = w->rsp;
    w->rsp = NULL;
    if (err_out != NULL)
        *err_out = rc == ZN_EPROTO ? w->code : 0;
    if (errbuf != NULL && errlen > 0)
        snprintf(errbuf, errlen, "%s", rc == ZN_EPROTO ? w->msg : "");
    zn__rpc_waiter_put(w);
    return rc;
}


int
zn_rpc_call_sync(zn_rpc_t *r, uint32_t cmd, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *rsp_type,
                 uint64_t timeout_ms, ProtobufCMessage **rsp_out,
                 uint32_t *err_out, char *errbuf, size_t errlen)
{
    zn__rpc_waiter_t *w;
    uint64_t ms;
    int rc;

    if (r == NULL || req == NULL || rsp_type == NULL || rsp_out == NULL)
        return ZN_EINVAL;
    *rsp_out = NULL;
    if (zn_loop_in_thread(r->loop))
        return ZN_EDEADLK;
    if ((w = zn__rpc_waiter_new()) == NULL)
        return ZN_ENOMEM;
    rc = zn__rpc_call_ex(r, cmd, req, rsp_type, timeout_ms, zn__rpc_sync_cb, w,
                         true);
    if (rc != 0) {
        pthread_mutex_lock(&w->mu);
        w->refs--;
        zn__rpc_waiter_put(w);
        return rc;
    }
    ms = timeout_ms != 0 ? timeout_ms : r->o.timeout_ms;
    if (ms > ZN__RPC_TIMEOUT_MAX)
        ms = ZN__RPC_TIMEOUT_MAX;
    return zn__rpc_wait(w, ms + ZN__RPC_SYNC_GRACE_MS, rsp_out, err_out, errbuf,
                        errlen);
}
