/*
 * service.c: the message service. Reads protocol v1 frames from a
 * connection, decodes each request safely (depth pre-scan, allocation
 * budget), runs the registered handler on the loop or on a worker, and
 * writes the answer. Every request is counted in flight from the moment it
 * is decoded until its answer is queued on its connection's loop; a
 * half-closed connection closes when the count drops to zero.
 */
#include <stdio.h>
#include <string.h>

#include "conn_int.h"
#include "msg_int.h"
#include "znet/log.h"
#include "znet/znet.pb-c.h"

#define ZN__MSG_STACK_FRAME 4096

static void zn__msg_on_connect(zn_conn_t *c, void *ud);
static void zn__msg_on_data(zn_conn_t *c, zn_buf_t *in, void *ud);
static void zn__msg_on_eof(zn_conn_t *c, void *ud);
static void zn__msg_on_close(zn_conn_t *c, zn_close_reason_t r, void *ud);
static void zn__msg_work(zn_work_t *w, int status);


void
zn_msg_opts_default(zn_msg_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->max_body = ZN_FRAME_MAX_BODY_DEFAULT;
    o->frame_deadline_ms = 30000;
    o->max_depth = ZN__PB_DEPTH_DEFAULT;
    o->max_held = ZN__MSG_MAX_HELD_DEFAULT;
}


/* The most bytes held at once, for the stats. */
static void
zn__msg_note_held_peak(zn_msg_service_t *svc, size_t now)
{
    size_t peak = atomic_load_explicit(&svc->held_peak, memory_order_relaxed);

    while (now > peak &&
           !atomic_compare_exchange_weak(&svc->held_peak, &peak, now))
        ;
}

/* ---- packing ------------------------------------------------------------ */


size_t
zn__msg_frame_size(const ProtobufCMessage *msg, size_t *body_len)
{
    size_t b = msg != NULL ? protobuf_c_message_get_packed_size(msg) : 0;

    if (b > UINT32_MAX)
        return 0;
    *body_len = b;
    return ZN_FRAME_HEADER_SIZE + b;
}


size_t
zn__msg_pack_into(uint8_t *out, uint32_t cmd, uint32_t seq, uint8_t flags,
                  const ProtobufCMessage *msg, size_t body_len)
{
    zn_frame_header_t h = {(uint32_t)body_len, cmd, seq, flags};

    (void)zn_frame_encode_header(out, &h);
    if (msg != NULL)
        (void)protobuf_c_message_pack(msg, out + ZN_FRAME_HEADER_SIZE);
    return ZN_FRAME_HEADER_SIZE + body_len;
}


int
zn_msg_pack_frame(uint32_t cmd, uint32_t seq, uint8_t flags,
                  const ProtobufCMessage *msg, uint8_t **out, size_t *len)
{
    size_t body, size = zn__msg_frame_size(msg, &body);

    if (size == 0 || (flags & ~ZN_FRAME_F_MASK) != 0)
        return size == 0 ? ZN_EMSGSIZE : ZN_EINVAL;
    if ((*out = zn__malloc(size)) == NULL)
        return ZN_ENOMEM;
    *len = zn__msg_pack_into(*out, cmd, seq, flags, msg, body);
    return 0;
}


void
zn_msg_frame_free(uint8_t *frame)
{
    zn__free(frame);
}


/* Packs a frame and hands it to zn_conn_send(): on the stack when small,
 * else in a temporary allocation. Any thread. */
static int
zn__msg_send_frame(zn_conn_t *c, uint32_t cmd, uint32_t seq, uint8_t flags,
                   const ProtobufCMessage *msg)
{
    uint8_t stack[ZN__MSG_STACK_FRAME], *p = stack;
    size_t body, size = zn__msg_frame_size(msg, &body);
    int rc;

    if (size == 0)
        return ZN_EMSGSIZE;
    if (size > sizeof(stack) && (p = zn__malloc(size)) == NULL)
        return ZN_ENOMEM;
    zn__msg_pack_into(p, cmd, seq, flags, msg, body);
    rc = zn_conn_send(c, p, size);
    if (p != stack)
        zn__free(p);
    return rc;
}


int
zn_msg_push(zn_conn_t *c, uint32_t cmd, const ProtobufCMessage *msg)
{
    return zn__msg_send_frame(c, cmd, 0, ZN_FRAME_F_ONEWAY, msg);
}


/* An error response that no request object stands behind (unknown cmd,
 * undecodable body, shutting down): written at once on the loop. */
static void
zn__msg_send_error(zn_msg_service_t *svc, zn_conn_t *c, uint32_t cmd,
                   uint32_t seq, uint32_t code, const char *text)
{
    Znet__Error e = ZNET__ERROR__INIT;

    int rc;

    e.code = code;
    e.message = (char *)text;
    rc = zn__msg_send_frame(c, cmd, seq, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR,
                            &e.base);
    if (rc == 0) {
        ZN__MSG_STAT_ADD(svc, replies, 1);
        ZN__MSG_STAT_ADD(svc, errors_sent[code < 6 ? code : 0], 1);
    } else if (rc == ZN_ENOMEM) { /* the peer would wait for ever */
        zn_conn_close_reason(c, ZN_CLOSE_NOMEM, true);
    }
}

/* ---- requests ----------------------------------------------------------- */


uint32_t
zn_msg_req_cmd(const zn_msg_req_t *req)
{
    return req->cmd;
}


uint32_t
zn_msg_req_seq(const zn_msg_req_t *req)
{
    return req->seq;
}


bool
zn_msg_req_oneway(const zn_msg_req_t *req)
{
    return (req->flags & ZN_FRAME_F_ONEWAY) != 0;
}


zn_conn_t *
zn_msg_req_conn(const zn_msg_req_t *req)
{
    return req->conn;
}


void
zn_msg_req_defer(zn_msg_req_t *req)
{
    req->deferred = true;
}


/* Frees the request once both the handler phase and the answer are over:
 * the message may be read by the handler after it answered. */
static void
zn__msg_req_unref(zn_msg_req_t *req)
{
    if (atomic_fetch_sub(&req->refs, 1) != 1)
        return;
    zn__pb_free(req->msg, &req->alloc);
    atomic_fetch_sub(&req->svc->held, req->held);
    zn_conn_unref(req->conn);
    zn__free(req);
}


/*
 * The end of a request, on its connection's loop, after its answer (if
 * any) was queued: a half-closed connection closes when nothing is left in
 * flight, and a closed one frees its state.
 */
static void
zn__msg_done(zn_msg_service_t *svc, zn_conn_t *c, zn__msg_conn_t *mc)
{
    mc->inflight--;
    atomic_fetch_sub(&svc->st.in_flight, 1);
    if (mc->inflight == 0 && !mc->closed)
        zn__conn_idle_release(c);
    if (mc->closed) {
        if (mc->inflight == 0)
            zn__free(mc);
    } else if (mc->eof && mc->inflight == 0) {
        zn_conn_close(c);
    }
}


typedef struct zn__msg_out_s {
    struct zn__msg_out_s *next;
    zn_task_t task;            /* the first of a chain carries it */
    zn_msg_service_t *svc;
    zn_conn_t *conn;           /* a reference */
    zn__msg_conn_t *mc;
    size_t len;
    bool late;                 /* the connection was closed already */
    uint8_t data[];
} zn__msg_out_t;

/* While a worker runs a batch of requests, their answers wait here and go
 * to each loop as one task: one lock and at most one wake-up per loop per
 * batch instead of one per answer. */
static __thread zn__msg_out_t *zn__tl_outs;
static __thread bool zn__tl_collect;


/* On the loop: a chain of answers, in the order they were made. */
static void
zn__msg_out_run(void *ud)
{
    zn__msg_out_t *o = ud, *next;

    int rc;

    for (; o != NULL; o = next) {
        next = o->next;
        rc = o->late ? ZN_ENOTCONN
             : o->len > 0 ? zn__conn_send_deferred(o->conn, o->data, o->len)
                          : 0;
        if (rc == ZN_ENOTCONN)
            ZN__MSG_STAT_ADD(o->svc, late_replies, 1);
        else if (rc == ZN_ENOMEM) /* lost: the peer must not wait */
            zn_conn_close_reason(o->conn, ZN_CLOSE_NOMEM, true);
        zn__msg_done(o->svc, o->conn, o->mc);
        zn_conn_unref(o->conn);
        zn__free(o);
    }
}


/* Posts a chain to its loop, carried by its first answer: nothing is
 * allocated, so answers always travel. */
static void
zn__msg_post_chain(zn_loop_t *loop, zn__msg_out_t *chain)
{
    zn_task_init(&chain->task, zn__msg_out_run, chain);
    (void)zn_loop_post_task(loop, &chain->task);
}


static void
zn__msg_collect_begin(void *ud)
{
    (void)ud;
    zn__tl_collect = true;
}


/* Sends the collected answers: reversed into the order they were made,
 * then split by loop, each part keeping that order. */
static void
zn__msg_collect_end(void *ud)
{
    zn__msg_out_t *list = NULL, *o, *next, *mine, **tail;
    zn_loop_t *loop;

    (void)ud;
    zn__tl_collect = false;
    for (o = zn__tl_outs; o != NULL; o = next) {
        next = o->next;
        o->next = list;
        list = o;
    }
    zn__tl_outs = NULL;
    while (list != NULL) {
        loop = zn_conn_loop(list->conn);
        mine = NULL;
        tail = &mine;
        for (zn__msg_out_t **pp = &list; *pp != NULL;) {
            o = *pp;
            if (zn_conn_loop(o->conn) != loop) {
                pp = &o->next;
                continue;
            }
            *pp = o->next;
            o->next = NULL;
            *tail = o;
            tail = &o->next;
        }
        zn__msg_post_chain(loop, mine);
    }
}


/*
 * From a worker (or any thread but the loop's): the packed answer travels
 * to the loop in one allocation, with the connection reference, and is
 * written there; the loop also ends the request. A connection closed
 * meanwhile drops it (counted as a late reply): the connection object is
 * never reused, so the answer cannot reach a newer peer on the same fd.
 * One already closed is not packed for: only the end of the request
 * travels, and the caller learns ZN_ENOTCONN at once.
 */
static int
zn__msg_answer_posted(zn_msg_req_t *req, uint8_t flags,
                      const ProtobufCMessage *msg)
{
    bool late = !(req->flags & ZN_FRAME_F_ONEWAY) &&
                !zn_conn_is_open(req->conn);
    size_t body = 0, size = 0;
    zn__msg_out_t *o;

    if (!late && !(req->flags & ZN_FRAME_F_ONEWAY) &&
        (size = zn__msg_frame_size(msg, &body)) == 0)
        return ZN_EMSGSIZE;
    if ((o = zn__malloc(sizeof(*o) + size)) == NULL)
        return ZN_ENOMEM;
    o->svc = req->svc;
    o->conn = req->conn;
    o->mc = req->mc;
    o->len = size;
    o->late = late;
    if (size > 0)
        zn__msg_pack_into(o->data, req->cmd, req->seq, flags, msg, body);
    zn_conn_ref(o->conn);
    o->next = NULL;
    if (zn__tl_collect) {
        o->next = zn__tl_outs;
        zn__tl_outs = o;
        return late ? ZN_ENOTCONN : 0;
    }
    zn__msg_post_chain(zn_conn_loop(req->conn), o);
    return late ? ZN_ENOTCONN : 0;
}


/* On the loop: write now, end now. */
static int
zn__msg_answer_here(zn_msg_req_t *req, uint8_t flags,
                    const ProtobufCMessage *msg)
{
    int rc = 0;

    if (!(req->flags & ZN_FRAME_F_ONEWAY)) {
        rc = zn__msg_send_frame(req->conn, req->cmd, req->seq, flags, msg);
        if (rc == ZN_EMSGSIZE || rc == ZN_ENOMEM)
            return rc;
        if (rc == ZN_ENOTCONN)
            ZN__MSG_STAT_ADD(req->svc, late_replies, 1);
    }
    zn__msg_done(req->svc, req->conn, req->mc);
    return rc;
}


/*
 * Answers once. Out of memory (or an answer too large for a frame) leaves
 * the request unanswered, so that the caller may answer again, with an
 * error for instance.
 */
static int
zn__msg_answer(zn_msg_req_t *req, uint8_t flags, const ProtobufCMessage *msg,
               uint32_t err_code)
{
    int rc;

    if (atomic_exchange(&req->answered, 1))
        return ZN_EALREADY;
    if (zn_loop_in_thread(zn_conn_loop(req->conn)))
        rc = zn__msg_answer_here(req, flags, msg);
    else
        rc = zn__msg_answer_posted(req, flags, msg);
    if (rc == ZN_EMSGSIZE || rc == ZN_ENOMEM) {
        atomic_store(&req->answered, 0);
        return rc;
    }
    if (rc == 0 && !(req->flags & ZN_FRAME_F_ONEWAY)) {
        ZN__MSG_STAT_ADD(req->svc, replies, 1);
        if (flags & ZN_FRAME_F_ERROR)
            ZN__MSG_STAT_ADD(req->svc,
                             errors_sent[err_code < 6 ? err_code : 0], 1);
    }
    zn__msg_req_unref(req);
    return rc;
}


int
zn_msg_reply(zn_msg_req_t *req, const ProtobufCMessage *rsp)
{
    if (req == NULL || rsp == NULL)
        return ZN_EINVAL;
    return zn__msg_answer(req, ZN_FRAME_F_RESPONSE, rsp, 0);
}


int
zn_msg_reply_error(zn_msg_req_t *req, uint32_t code, const char *text)
{
    Znet__Error e = ZNET__ERROR__INIT;

    if (req == NULL)
        return ZN_EINVAL;
    e.code = code;
    e.message = (char *)(text != NULL ? text : "");
    return zn__msg_answer(req, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR,
                          &e.base, code);
}


/* On the loop: a request that cannot be answered ends, and its
 * connection closes so that the peer does not wait for the answer. */
static void
zn__msg_abandon_here(zn_msg_req_t *req)
{
    zn__msg_done(req->svc, req->conn, req->mc);
    zn_conn_close_reason(req->conn, ZN_CLOSE_NOMEM, true);
    zn__msg_req_unref(req);
}


static void
zn__msg_abandon_task(void *ud)
{
    zn__msg_abandon_here(ud);
}


/*
 * Answers with an error, or, if even that cannot be queued (out of
 * memory), abandons the request: nothing may stay in flight for ever. Off
 * the loop the abandonment travels as the request's own task, which
 * cannot fail.
 */
static void
zn__msg_answer_or_abandon(zn_msg_req_t *req, uint32_t code, const char *text)
{
    if (zn_msg_reply_error(req, code, text) != ZN_ENOMEM ||
        atomic_exchange(&req->answered, 1))
        return;
    ZN_LOG_RL(ZN_LOG_ERROR, 1, "msg: cmd %u: cannot answer, closing",
              req->cmd);
    if (zn_loop_in_thread(zn_conn_loop(req->conn))) {
        zn__msg_abandon_here(req);
        return;
    }
    zn_task_init(&req->task, zn__msg_abandon_task, req);
    (void)zn_loop_post_task(zn_conn_loop(req->conn), &req->task);
}


/*
 * Runs the handler (on the loop or a worker). A handler that neither
 * answered nor deferred gets INTERNAL answered for it, so that no request
 * is left hanging; the handler phase then lets go of the request.
 */
static void
zn__msg_run(zn_msg_req_t *req)
{
    req->ent->cb(req, req->msg, req->ent->ud);
    if (!req->deferred && !atomic_load(&req->answered))
        zn__msg_answer_or_abandon(req, ZN_CODE_INTERNAL, "no reply");
    zn__msg_req_unref(req);
}

/* ---- dispatch ----------------------------------------------------------- */


/* Bad input is logged at WARN once per connection, with the peer. */
static void
zn__msg_warn(zn_conn_t *c, zn__msg_conn_t *mc, const char *what,
             uint32_t cmd)
{
    if (mc->warned)
        return;
    mc->warned = true;
    ZN_LOG_RL(ZN_LOG_WARN, 20, "%s: %s (cmd %u)", zn_conn_peer(c), what, cmd);
}


/* The decode budget of a request: its command's, else the service's, else
 * the body's size plus 64 KiB. */
static size_t
zn__msg_budget(const zn_msg_service_t *svc, const zn__msg_entry_t *ent,
               size_t body)
{
    if (ent->budget != 0)
        return ent->budget;
    if (svc->o.decode_budget != 0)
        return svc->o.decode_budget;
    return zn__pb_default_budget(body);
}


/*
 * Takes `n` bytes of the service's held budget (decoded requests waiting
 * or running); false if that would pass max_held.
 */
static bool
zn__msg_hold(zn_msg_service_t *svc, size_t n)
{
    size_t was = atomic_fetch_add(&svc->held, n);

    if (was + n <= svc->o.max_held && was + n >= was) {
        zn__msg_note_held_peak(svc, was + n);
        return true;
    }
    atomic_fetch_sub(&svc->held, n);
    return false;
}


/* Answers a request that cannot be decoded (or held), and logs why. */
static void
zn__msg_refuse(zn_msg_service_t *svc, zn_conn_t *c, zn__msg_conn_t *mc,
               const zn_frame_t *f, int rc)
{
    bool oneway = zn_frame_is_oneway(&f->hdr);

    if (rc == ZN_ENOMEM) {
        ZN_LOG_RL(ZN_LOG_ERROR, 1, "msg: out of memory decoding cmd %u",
                  f->hdr.cmd);
        if (!oneway)
            zn__msg_send_error(svc, c, f->hdr.cmd, f->hdr.seq,
                               ZN_CODE_INTERNAL, "out of memory");
        return;
    }
    if (rc == ZN_EAGAIN) {
        ZN__MSG_STAT_ADD(svc, overloaded, 1);
        if (!oneway)
            zn__msg_send_error(svc, c, f->hdr.cmd, f->hdr.seq,
                               ZN_CODE_OVERLOADED, "decoded requests over "
                               "the service's bound");
        return;
    }
    zn__msg_warn(c, mc, zn__pb_err_reason(rc), f->hdr.cmd);
    if (!oneway)
        zn__msg_send_error(svc, c, f->hdr.cmd, f->hdr.seq, ZN_CODE_BAD_REQUEST,
                           zn__pb_err_reason(rc));
}


/*
 * Decodes a request's body into a new request object, in three steps:
 * the bound of what decoding will allocate (refused past the command's
 * budget before anything is allocated), the bytes held by the service's
 * decoded requests (refused OVERLOADED past max_held), the unpack. On
 * failure answers the error itself and returns NULL.
 */
static zn_msg_req_t *
zn__msg_decode(zn_msg_service_t *svc, zn_conn_t *c, zn__msg_conn_t *mc,
               const zn__msg_entry_t *ent, const zn_frame_t *f)
{
    zn__pb_opts_t po = {svc->o.max_depth, 0, NULL, 0};
    size_t bound, hold;
    zn_msg_req_t *req;
    int rc;

    rc = zn__pb_bound(ent->desc, f->body, f->hdr.length, svc->o.max_depth,
                      zn__msg_budget(svc, ent, f->hdr.length), &bound);
    if (rc != 0) {
        zn__msg_refuse(svc, c, mc, f, rc);
        return NULL;
    }
    hold = bound + sizeof(*req);
    if (!zn__msg_hold(svc, hold)) {
        zn__msg_refuse(svc, c, mc, f, ZN_EAGAIN);
        return NULL;
    }
    if ((req = zn__malloc(sizeof(*req))) == NULL) {
        atomic_fetch_sub(&svc->held, hold);
        zn__msg_refuse(svc, c, mc, f, ZN_ENOMEM);
        return NULL;
    }
    /* Zeroed but for the arena, which needs no zeros. */
    memset(req, 0, offsetof(zn_msg_req_t, arena));
    po.arena = req->arena;
    po.arena_len = sizeof(req->arena);
    rc = zn__pb_unpack_bounded(ent->desc, f->body, f->hdr.length, bound, &po,
                               &req->msg, &req->alloc);
    if (rc != 0) {
        atomic_fetch_sub(&svc->held, hold);
        zn__free(req);
        zn__msg_refuse(svc, c, mc, f, rc);
        return NULL;
    }
    /* Keep what the decoding really took (at most the bound). */
    req->held = req->alloc.charged + sizeof(*req);
    atomic_fetch_sub(&svc->held, hold - req->held);
    req->svc = svc;
    req->conn = c;
    req->mc = mc;
    req->ent = ent;
    req->cmd = f->hdr.cmd;
    req->seq = f->hdr.seq;
    req->flags = f->hdr.flags;
    atomic_init(&req->refs, 2);
    zn_conn_ref(c);
    return req;
}


typedef struct {
    zn_msg_req_t *head, *last;
} zn__msg_batch_t;


/* One complete frame: answer what can be answered at once, else decode
 * and run the handler here or add the request to the workers' batch. */
static void
zn__msg_frame(zn_msg_service_t *svc, zn_conn_t *c, zn__msg_conn_t *mc,
              const zn_frame_t *f, zn__msg_batch_t *batch)
{
    bool oneway = zn_frame_is_oneway(&f->hdr);
    const zn__msg_entry_t *ent;
    zn_msg_req_t *req;
    char text[48];

    if (zn_frame_is_response(&f->hdr)) {
        ZN__MSG_STAT_ADD(svc, responses_dropped, 1);
        return;
    }
    ZN__MSG_STAT_ADD(svc, requests, 1);
    if (oneway)
        ZN__MSG_STAT_ADD(svc, oneway, 1);
    if (atomic_load(&svc->shutting_down)) {
        if (!oneway)
            zn__msg_send_error(svc, c, f->hdr.cmd, f->hdr.seq,
                               ZN_CODE_SHUTTING_DOWN, "shutting down");
        return;
    }
    if ((ent = zn__msg_table_find(svc->table, f->hdr.cmd)) == NULL) {
        zn__msg_warn(c, mc, "unknown command", f->hdr.cmd);
        snprintf(text, sizeof(text), "unknown command %u", f->hdr.cmd);
        if (!oneway)
            zn__msg_send_error(svc, c, f->hdr.cmd, f->hdr.seq,
                               ZN_CODE_UNKNOWN_CMD, text);
        return;
    }
    if ((req = zn__msg_decode(svc, c, mc, ent, f)) == NULL)
        return;
    if (mc->inflight++ == 0)
        zn__conn_idle_hold(c); /* waiting for an answer is not idle */
    atomic_fetch_add(&svc->st.in_flight, 1);
    if (svc->o.workers == 0) {
        zn__msg_run(req);
        return;
    }
    req->work.next = NULL; /* queued with the others of this read */
    req->work.cb = zn__msg_work;
    if (batch->head == NULL)
        batch->head = req;
    else
        batch->last->work.next = &req->work;
    batch->last = req;
}


/* On a worker: runs the request, or, if the pool stopped before it could,
 * answers SHUTTING_DOWN for it. */
static void
zn__msg_work(zn_work_t *w, int status)
{
    zn_msg_req_t *req = zn__container_of(w, zn_msg_req_t, work);

    if (status == 0) {
        zn__msg_run(req);
        return;
    }
    zn__msg_answer_or_abandon(req, ZN_CODE_SHUTTING_DOWN, "shutting down");
    zn__msg_req_unref(req); /* the handler phase, never run */
}


/* The worker queue a connection's requests go to: in ordered mode always
 * the same one, so that its answers keep their order. */
static uint64_t
zn__msg_queue_key(const zn_msg_service_t *svc, const zn_conn_t *c)
{
    return svc->o.ordered ? zn_conn_id(c) % svc->o.workers : 0;
}


/* Hands a chain of requests for one queue to the workers at once; those
 * that do not fit are answered here. */
static void
zn__msg_dispatch_chain(zn_msg_service_t *svc, zn_msg_req_t *chain)
{
    zn_work_t *left, *next;
    zn_msg_req_t *req;
    unsigned n;
    int why;

    left = zn_workers_submit(svc->pool, zn__msg_queue_key(svc, chain->conn),
                             &chain->work, &why, &n);
    if (n > 0)
        ZN__MSG_STAT_ADD(svc, handoffs, 1);
    for (; left != NULL; left = next) {
        next = left->next;
        req = zn__container_of(left, zn_msg_req_t, work);
        if (why == ZN_ENOBUFS)
            ZN__MSG_STAT_ADD(svc, overloaded, 1);
        if (why == ZN_ESHUTDOWN)
            zn__msg_answer_or_abandon(req, ZN_CODE_SHUTTING_DOWN,
                                      "shutting down");
        else
            zn__msg_answer_or_abandon(req, ZN_CODE_OVERLOADED,
                                      "overloaded");
        zn__msg_req_unref(req);
    }
}


/*
 * The requests read during one loop iteration wait here, on the loop's
 * thread, and go to the worker queues together at the end of the
 * iteration's io phase: one lock and one wake-up per queue, instead of
 * one per connection read. A thread runs one loop at a time, so the
 * chain and the task that flushes it are the thread's; the task is posted
 * to the loop from its own thread (no system call) and runs in the same
 * iteration, after the io callbacks.
 */
static __thread zn_msg_req_t *zn__tl_handoff_head, *zn__tl_handoff_tail;
static __thread zn_task_t zn__tl_handoff_task;


/*
 * Splits the chain by service and queue, each part keeping its order
 * (ordered mode: a connection's requests stay in order on their worker's
 * queue), and hands each part over.
 */
static void
zn__msg_handoff_flush(void *ud)
{
    zn_work_t *all = &zn__tl_handoff_head->work, *part, **tail, **pp;
    zn_msg_req_t *first, *r;
    uint64_t key;

    (void)ud;
    zn__tl_handoff_head = zn__tl_handoff_tail = NULL;
    while (all != NULL) {
        first = zn__container_of(all, zn_msg_req_t, work);
        key = zn__msg_queue_key(first->svc, first->conn);
        part = NULL;
        tail = &part;
        for (pp = &all; *pp != NULL;) {
            r = zn__container_of(*pp, zn_msg_req_t, work);
            if (r->svc != first->svc ||
                zn__msg_queue_key(r->svc, r->conn) != key) {
                pp = &(*pp)->next;
                continue;
            }
            *pp = r->work.next;
            r->work.next = NULL;
            *tail = &r->work;
            tail = &r->work.next;
        }
        zn__msg_dispatch_chain(first->svc,
                               zn__container_of(part, zn_msg_req_t, work));
    }
}


/* The requests of one read join the iteration's hand-off (see above). */
static void
zn__msg_handoff_add(zn_conn_t *c, zn__msg_batch_t *batch)
{
    if (batch->head == NULL)
        return;
    if (zn__tl_handoff_head == NULL) {
        zn__tl_handoff_head = batch->head;
        zn_task_init(&zn__tl_handoff_task, zn__msg_handoff_flush, NULL);
        (void)zn_loop_post_task(zn_conn_loop(c), &zn__tl_handoff_task);
    } else {
        zn__tl_handoff_tail->work.next = &batch->head->work;
    }
    zn__tl_handoff_tail = batch->last;
}


/* A header that breaks the protocol: the stream cannot be trusted past
 * it, so nothing more is read, and the connection closes once the answers
 * to the valid requests before it are written (bounded by the linger). */
static void
zn__msg_bad_header(zn_msg_service_t *svc, zn_conn_t *c, zn__msg_conn_t *mc,
                   zn_frame_reason_t reason)
{
    if (reason == ZN_FRAME_TOO_LONG)
        ZN__MSG_STAT_ADD(svc, too_large, 1);
    else
        ZN__MSG_STAT_ADD(svc, bad_frames, 1);
    zn__msg_warn(c, mc, zn_frame_reason_name(reason), 0);
    zn_conn_close_reason(c, ZN_CLOSE_PROTOCOL, false);
}


/*
 * Handles every complete frame in `in` (their replies are written in one
 * batch when this returns). The frame deadline runs from the first byte of
 * a frame to its last: it starts when a partial frame is left behind after
 * a complete one (or with nothing before), and stops when no partial frame
 * is left.
 */
static void
zn__msg_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    zn_msg_service_t *svc = ud;
    zn__msg_conn_t *mc = zn_conn_get_data(c);
    zn__msg_batch_t batch = {NULL, NULL};
    zn_frame_reason_t reason;
    unsigned frames = 0;
    zn_frame_t f;
    int rc;

    while (zn_buf_len(in) > 0 && zn_conn_is_open(c)) {
        rc = zn_frame_next(zn_buf_peek(in), zn_buf_len(in), svc->o.max_body,
                           &f, &reason);
        if (rc == ZN_EAGAIN)
            break;
        if (rc != 0) {
            zn__msg_bad_header(svc, c, mc, reason);
            break;
        }
        zn__msg_frame(svc, c, mc, &f, &batch);
        zn_buf_consume(in, f.size);
        frames++;
    }
    zn__msg_handoff_add(c, &batch);
    if (!zn_conn_is_open(c)) {
        zn_buf_consume(in, zn_buf_len(in));
        return;
    }
    if (zn_buf_len(in) == 0 && mc->frame_open)
        zn_conn_set_deadline(c, 0);
    else if (zn_buf_len(in) > 0 && (frames > 0 || !mc->frame_open))
        zn_conn_set_deadline(c, svc->o.frame_deadline_ms);
    mc->frame_open = zn_buf_len(in) > 0;
}

/* ---- connection callbacks ----------------------------------------------- */


static void
zn__msg_on_connect(zn_conn_t *c, void *ud)
{
    zn__msg_conn_t *mc = zn__calloc(1, sizeof(*mc));

    (void)ud;
    if (mc == NULL) {
        zn_conn_close_reason(c, ZN_CLOSE_NOMEM, true);
        return;
    }
    zn_conn_set_data(c, mc);
}


/* Half-close: requests already received are answered, then the
 * connection closes (from zn__msg_done when the last one ends). */
static void
zn__msg_on_eof(zn_conn_t *c, void *ud)
{
    zn__msg_conn_t *mc = zn_conn_get_data(c);

    (void)ud;
    if (mc == NULL || mc->inflight == 0) {
        zn_conn_close_reason(c, ZN_CLOSE_PEER, false);
        return;
    }
    mc->eof = true;
}


static void
zn__msg_on_close(zn_conn_t *c, zn_close_reason_t reason, void *ud)
{
    zn_msg_service_t *svc = ud;
    zn__msg_conn_t *mc = zn_conn_get_data(c);

    /* The core has logged the deadline with the peer's address. */
    if (reason == ZN_CLOSE_DEADLINE)
        ZN__MSG_STAT_ADD(svc, deadline_closes, 1);
    if (mc == NULL)
        return;
    zn_conn_set_data(c, NULL);
    mc->closed = true;
    if (mc->inflight == 0)
        zn__free(mc);
}

/* ---- the service -------------------------------------------------------- */


/* The frame a refused connection gets: OVERLOADED, seq 0. */
static int
zn__msg_make_reject(zn_msg_service_t *svc)
{
    Znet__Error e = ZNET__ERROR__INIT;

    e.code = ZN_CODE_OVERLOADED;
    e.message = "too many connections";
    return zn_msg_pack_frame(0, 0, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR,
                             &e.base, &svc->reject, &svc->reject_len);
}


/* The worker pool, whose batches collect their answers (one post per
 * loop per batch). */
static int
zn__msg_workers_start(zn_msg_service_t *svc)
{
    zn_workers_opts_t wo;

    if (svc->o.workers == 0)
        return 0;
    zn_workers_opts_default(&wo);
    wo.threads = svc->o.workers;
    wo.ordered = svc->o.ordered;
    wo.queue_max = svc->o.queue_max;
    wo.batch_begin = zn__msg_collect_begin;
    wo.batch_end = zn__msg_collect_end;
    return zn_workers_new(&wo, &svc->pool);
}


int
zn_msg_service_new(zn_msg_table_t *t, const zn_msg_opts_t *o,
                   zn_msg_service_t **out)
{
    zn_msg_service_t *svc;
    int rc;

    if (t == NULL || o == NULL || o->max_depth > ZN__PB_DEPTH_MAX ||
        o->workers > 1024)
        return ZN_EINVAL;
    if ((svc = zn__calloc(1, sizeof(*svc))) == NULL)
        return ZN_ENOMEM;
    svc->table = t;
    svc->o = *o;
    if (svc->o.max_body == 0)
        svc->o.max_body = ZN_FRAME_MAX_BODY_DEFAULT;
    if (svc->o.frame_deadline_ms == 0)
        svc->o.frame_deadline_ms = 30000;
    if (svc->o.max_depth == 0)
        svc->o.max_depth = ZN__PB_DEPTH_DEFAULT;
    if (svc->o.max_held == 0)
        svc->o.max_held = ZN__MSG_MAX_HELD_DEFAULT;
    svc->handler = (zn_handler_t){.on_connect = zn__msg_on_connect,
                                  .on_data = zn__msg_on_data,
                                  .on_eof = zn__msg_on_eof,
                                  .on_close = zn__msg_on_close,
                                  .ud = svc};
    if ((rc = zn__msg_make_reject(svc)) != 0 ||
        (rc = zn__msg_workers_start(svc)) != 0) {
        zn_msg_service_free(svc);
        return rc;
    }
    t->frozen = true;
    *out = svc;
    return 0;
}


void
zn_msg_service_bind(zn_msg_service_t *svc, zn_server_opts_t *so)
{
    so->handler = svc->handler;
    /* A partial frame is at most a header and max_body; one more read of
     * slack. Anything past it is a bug in the peer or an attack. */
    so->limits.in_max = (size_t)svc->o.max_body + ZN_FRAME_HEADER_SIZE +
                        64 * 1024;
    so->limits.idle_ms = svc->o.idle_ms;
    so->reject_data = svc->reject;
    so->reject_len = svc->reject_len;
}


const zn_handler_t *
zn_msg_service_handler(zn_msg_service_t *svc)
{
    return &svc->handler;
}


void
zn_msg_service_shutdown(zn_msg_service_t *svc)
{
    atomic_store(&svc->shutting_down, 1);
}


uint64_t
zn_msg_service_pending(const zn_msg_service_t *svc)
{
    return atomic_load(&((zn_msg_service_t *)svc)->st.in_flight);
}


void
zn_msg_service_stop(zn_msg_service_t *svc)
{
    atomic_store(&svc->shutting_down, 1);
    if (svc->pool != NULL)
        zn_workers_stop(svc->pool);
}


void
zn_msg_service_free(zn_msg_service_t *svc)
{
    if (svc == NULL)
        return;
    zn_msg_service_stop(svc);
    zn_workers_free(svc->pool);
    zn_msg_frame_free(svc->reject);
    zn__free(svc);
}


void
zn_msg_service_stats(const zn_msg_service_t *svc, zn_msg_stats_t *st)
{
    zn_msg_service_t *s = (zn_msg_service_t *)svc;
    unsigned i;

    st->requests = atomic_load(&s->st.requests);
    st->replies = atomic_load(&s->st.replies);
    for (i = 0; i < 6; i++)
        st->errors_sent[i] = atomic_load(&s->st.errors_sent[i]);
    st->oneway = atomic_load(&s->st.oneway);
    st->bad_frames = atomic_load(&s->st.bad_frames);
    st->too_large = atomic_load(&s->st.too_large);
    st->deadline_closes = atomic_load(&s->st.deadline_closes);
    st->responses_dropped = atomic_load(&s->st.responses_dropped);
    st->late_replies = atomic_load(&s->st.late_replies);
    st->overloaded = atomic_load(&s->st.overloaded);
    st->queued = s->pool != NULL ? zn_workers_queued(s->pool) : 0;
    st->in_flight = atomic_load(&s->st.in_flight);
    st->handoffs = atomic_load(&s->st.handoffs);
    st->held = atomic_load(&s->held);
    st->held_peak = atomic_load(&s->held_peak);
}
