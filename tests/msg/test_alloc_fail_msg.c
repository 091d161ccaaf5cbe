/*
 * test_alloc_fail_msg.c: allocation failure injection in the message
 * layer, with the harness of ../test_alloc_fail.c: the service decoding
 * and answering a pipelined batch (single loop; IO loop + workers), and
 * the RPC client calling from its loop and from another thread against a
 * server of the test's own that allocates nothing through znet.
 *
 * Every request that is not ONEWAY is answered exactly once (its answer,
 * or INTERNAL when the server ran out of memory for it) unless the
 * connection closes; every call that started gets exactly one callback.
 */
#define FA_HARNESS_ONLY
#include "test_alloc_fail.c"

#include "demo.pb-c.h"
#include "znet/msg.h"
#include "znet/rpc.h"
#include "znet/znet.pb-c.h"

enum { CMD_TEST = 1, CMD_ECHO = 2, CMD_NOREPLY = 3, CMD_UNKNOWN = 99 };

static const char hello[] = "hello, i'm server";


/* Packs a frame into `out` (room for it checked by the caller) with
 * protobuf-c alone: the test's own frames must not use the hook. */
static size_t
pack(uint8_t *out, uint32_t cmd, uint32_t seq, uint8_t flags,
     const ProtobufCMessage *m)
{
    size_t body = m != NULL ? protobuf_c_message_get_packed_size(m) : 0;
    zn_frame_header_t h = {(uint32_t)body, cmd, seq, flags};

    assert_int_equal(zn_frame_encode_header(out, &h), 0);
    if (m != NULL)
        protobuf_c_message_pack(m, out + ZN_FRAME_HEADER_SIZE);
    return ZN_FRAME_HEADER_SIZE + body;
}


static size_t
pack_echo(uint8_t *out, uint32_t seq, size_t n, uint32_t seed)
{
    static uint8_t payload[80000];
    Demo__EchoReq e = DEMO__ECHO_REQ__INIT;

    tu_pattern(payload, n, seed, 0);
    e.payload.data = payload;
    e.payload.len = n;
    return pack(out, CMD_ECHO, seq, 0, &e.base);
}


static size_t
pack_test(uint8_t *out, uint32_t cmd, uint32_t seq, uint8_t flags)
{
    Demo__TestReq t = DEMO__TEST_REQ__INIT;

    t.msg = "hi";
    return pack(out, cmd, seq, flags, &t.base);
}

/* ---- handlers -------------------------------------------------------- */


static void
h_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;
    int rc;

    (void)msg;
    (void)ud;
    rsp.res = (char *)hello;
    rc = zn_msg_reply(req, &rsp.base);
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM || rc == ZN_ENOTCONN, rc);
}


static void
h_echo(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;
    int rc;

    (void)ud;
    rsp.payload = ((const Demo__EchoReq *)msg)->payload;
    rc = zn_msg_reply(req, &rsp.base);
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM || rc == ZN_ENOTCONN, rc);
}


/* Answers nothing: the service answers INTERNAL for it. */
static void
h_noreply(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    (void)req;
    (void)msg;
    (void)ud;
}

/* ---- scenario: the service --------------------------------------------- */

typedef struct {
    unsigned io_threads, workers;
} model_t;

/* The batch: one request per seq (seq = index + 1). */
typedef struct {
    uint32_t cmd;
    size_t len;     /* echo payload; SIZE_MAX: an undecodable body */
    uint8_t flags;
    uint32_t error; /* the error answer expected, 0: a response */
} breq_t;

static const breq_t batch[] = {
    {CMD_TEST, 0, 0, 0},
    {CMD_ECHO, 0, 0, 0},
    {CMD_ECHO, 100, 0, 0},
    {CMD_ECHO, 3000, 0, 0},
    {CMD_ECHO, 5000, 0, 0},  /* its answer is packed off the stack */
    {CMD_ECHO, 70000, 0, 0}, /* more than one read of the loop */
    {CMD_NOREPLY, 0, 0, ZN_CODE_INTERNAL},
    {CMD_UNKNOWN, 0, 0, ZN_CODE_UNKNOWN_CMD},
    {CMD_ECHO, SIZE_MAX, 0, ZN_CODE_BAD_REQUEST},
    {CMD_TEST, 0, ZN_FRAME_F_ONEWAY, 0},
    {CMD_TEST, 0, 0, 0},
};

#define NBATCH ((int)(sizeof(batch) / sizeof(batch[0])))


/* Writes the whole batch at once; returns the bytes. */
static size_t
batch_pack(uint8_t *out)
{
    static const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff};
    zn_frame_header_t h = {sizeof(junk), CMD_ECHO, 0, 0};
    size_t n = 0;
    uint32_t seq;
    int i;

    for (i = 0; i < NBATCH; i++) {
        seq = (uint32_t)i + 1;
        if (batch[i].len == SIZE_MAX) {
            h.seq = seq;
            assert_int_equal(zn_frame_encode_header(out + n, &h), 0);
            memcpy(out + n + ZN_FRAME_HEADER_SIZE, junk, sizeof(junk));
            n += ZN_FRAME_HEADER_SIZE + sizeof(junk);
        } else if (batch[i].cmd == CMD_ECHO) {
            n += pack_echo(out + n, seq, batch[i].len, seq);
        } else {
            n += pack_test(out + n, batch[i].cmd, seq, batch[i].flags);
        }
    }
    return n;
}


/* Checks one answer against its request: the expected response or error,
 * or INTERNAL (the server ran out of memory for it). */
static void
check_answer(const zn_frame_header_t *h, const uint8_t *body)
{
    const breq_t *b = &batch[h->seq - 1];
    Demo__EchoRsp *e;
    Znet__Error *err;

    if (h->flags & ZN_FRAME_F_ERROR) {
        err = znet__error__unpack(NULL, h->length, body);
        FA_NOTE(err != NULL);
        if (err != NULL)
            FA_NOTE_RC(err->code == b->error ||
                           err->code == ZN_CODE_INTERNAL, err->code);
        znet__error__free_unpacked(err, NULL);
        return;
    }
    FA_NOTE_RC(b->error == 0, h->seq);
    if (b->cmd != CMD_ECHO)
        return;
    e = demo__echo_rsp__unpack(NULL, h->length, body);
    FA_NOTE(e != NULL && e->payload.len == b->len &&
            tu_pattern_check(e->payload.data, b->len, h->seq, 0));
    demo__echo_rsp__free_unpacked(e, NULL);
}


/* Reads answers until every request that wants one has it, or the
 * server closes. Each seq is answered at most once. */
static void
batch_read(int fd)
{
    static uint8_t body[80000];
    uint8_t hdr[ZN_FRAME_HEADER_SIZE];
    bool seen[NBATCH] = {false};
    int left = NBATCH - 1; /* all but the ONEWAY one */
    zn_frame_header_t h;
    int rc;

    while (left > 0 && cli_read(fd, hdr, sizeof(hdr)) == sizeof(hdr)) {
        rc = zn_frame_decode_header(hdr, sizeof(hdr), sizeof(body), &h, NULL);
        FA_NOTE_RC(rc == 0, rc);
        if (rc != 0)
            return;
        FA_NOTE_RC(h.seq >= 1 && h.seq <= (uint32_t)NBATCH, h.seq);
        if (h.seq < 1 || h.seq > (uint32_t)NBATCH ||
            cli_read(fd, body, h.length) != h.length)
            return;
        FA_NOTE_RC(!seen[h.seq - 1] && (h.flags & ZN_FRAME_F_RESPONSE),
                   h.seq);
        FA_NOTE_RC(!(batch[h.seq - 1].flags & ZN_FRAME_F_ONEWAY), h.seq);
        seen[h.seq - 1] = true;
        left--;
        check_answer(&h, body);
    }
}


/* The command table and the service; false if memory ran out. */
static bool
svc_new(const model_t *m, zn_msg_table_t **t, zn_msg_service_t **svc)
{
    zn_msg_opts_t mo;
    int rc;

    *svc = NULL;
    if ((rc = zn_msg_table_new(t)) != 0) {
        FA_NOTE_RC(rc == ZN_ENOMEM, rc);
        return false;
    }
    if ((rc = zn_msg_table_register(*t, CMD_TEST, &demo__test_req__descriptor,
                                    h_test, NULL)) != 0 ||
        (rc = zn_msg_table_register(*t, CMD_ECHO, &demo__echo_req__descriptor,
                                    h_echo, NULL)) != 0 ||
        (rc = zn_msg_table_register(*t, CMD_NOREPLY,
                                    &demo__test_req__descriptor, h_noreply,
                                    NULL)) != 0)
        goto fail;
    zn_msg_opts_default(&mo);
    mo.workers = m->workers;
    if ((rc = zn_msg_service_new(*t, &mo, svc)) == 0)
        return true;
fail:
    FA_NOTE_RC(rc == ZN_ENOMEM, rc);
    zn_msg_table_free(*t);
    return false;
}


/*
 * A client writes the batch in one go and reads the answers; then the
 * service and the server stop as rpc_server does it. No request may stay
 * in flight after the stop.
 */
static void
sc_service(const void *arg)
{
    static uint8_t out[100000];
    const model_t *m = arg;
    zn_msg_service_t *svc;
    zn_server_opts_t so;
    zn_msg_table_t *t;
    zn_msg_stats_t st;
    srv_fx_t fx;
    int fd;

    if (!svc_new(m, &t, &svc))
        return;
    zn_server_opts_default(&so);
    so.io_threads = m->io_threads;
    zn_msg_service_bind(svc, &so);
    if (srv_fx_start(&fx, &so) == 0) {
        fd = cli_connect(zn_server_port(fx.srv));
        if (cli_write(fd, out, batch_pack(out)) == 0)
            batch_read(fd);
        close(fd);
        fa_teardown();
        zn_msg_service_stop(svc);
        srv_fx_stop(&fx);
    }
    fa_teardown();
    zn_msg_service_stats(svc, &st);
    FA_NOTE_RC(st.in_flight == 0, st.in_flight);
    zn_msg_service_free(svc);
    zn_msg_table_free(t);
}

/* ---- a protocol v1 server of the test's own ---------------------------- */

#define FAKE_CONNS 8

typedef struct {
    int fd;
    uint8_t *buf; /* plain malloc: not through the hook */
    size_t len, cap;
} fake_conn_t;

typedef struct {
    int lfd, wake;
    uint16_t port;
    pthread_t th;
    fake_conn_t c[FAKE_CONNS];
} fake_t;


static void
fake_send(int fd, uint32_t cmd, uint32_t seq, uint8_t flags,
          const ProtobufCMessage *m)
{
    size_t n = ZN_FRAME_HEADER_SIZE + protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(n);

    n = pack(p, cmd, seq, flags | ZN_FRAME_F_RESPONSE, m);
    (void)!send(fd, p, n, MSG_NOSIGNAL);
    free(p);
}


/* cmd 1: TestRsp; cmd 2: the payload back; any other: error 1000. */
static void
fake_answer(int fd, const zn_frame_t *f)
{
    Demo__TestRsp t = DEMO__TEST_RSP__INIT;
    Demo__EchoRsp e = DEMO__ECHO_RSP__INIT;
    Znet__Error err = ZNET__ERROR__INIT;
    Demo__EchoReq *q;

    if (f->hdr.flags & ZN_FRAME_F_ONEWAY)
        return;
    if (f->hdr.cmd == CMD_TEST) {
        t.res = (char *)hello;
        fake_send(fd, f->hdr.cmd, f->hdr.seq, 0, &t.base);
    } else if (f->hdr.cmd == CMD_ECHO &&
               (q = demo__echo_req__unpack(NULL, f->hdr.length, f->body))) {
        e.payload = q->payload;
        fake_send(fd, f->hdr.cmd, f->hdr.seq, 0, &e.base);
        demo__echo_req__free_unpacked(q, NULL);
    } else {
        err.code = 1000;
        err.message = "app";
        fake_send(fd, f->hdr.cmd, f->hdr.seq, ZN_FRAME_F_ERROR, &err.base);
    }
}


static void
fake_drop(fake_conn_t *c)
{
    close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}


/* Reads what is there and answers every complete frame. */
static void
fake_read(fake_conn_t *c)
{
    zn_frame_t f;
    ssize_t r;

    if (c->cap - c->len < 65536) {
        c->cap = c->cap * 2 + 65536;
        c->buf = realloc(c->buf, c->cap);
    }
    r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (r <= 0) {
        fake_drop(c);
        return;
    }
    c->len += (size_t)r;
    while (zn_frame_next(c->buf, c->len, 1u << 20, &f, NULL) == 0) {
        fake_answer(c->fd, &f);
        memmove(c->buf, c->buf + f.size, c->len - f.size);
        c->len -= f.size;
    }
}


static void
fake_accept(fake_t *s)
{
    int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC), i;

    for (i = 0; fd >= 0 && i < FAKE_CONNS; i++)
        if (s->c[i].fd < 0) {
            s->c[i].fd = fd;
            return;
        }
    if (fd >= 0)
        close(fd);
}


/* One poll loop for the listener, the connections and the stop signal
 * (an eventfd), so that stopping costs no time-out. */
static void *
fake_main(void *arg)
{
    fake_t *s = arg;
    struct pollfd p[FAKE_CONNS + 2];
    int i;

    for (;;) {
        p[0] = (struct pollfd){.fd = s->wake, .events = POLLIN};
        p[1] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
        for (i = 0; i < FAKE_CONNS; i++)
            p[i + 2] = (struct pollfd){.fd = s->c[i].fd, .events = POLLIN};
        if (poll(p, FAKE_CONNS + 2, -1) < 0 || p[0].revents != 0)
            break;
        if (p[1].revents != 0)
            fake_accept(s);
        for (i = 0; i < FAKE_CONNS; i++)
            if (s->c[i].fd >= 0 && p[i + 2].revents != 0)
                fake_read(&s->c[i]);
    }
    for (i = 0; i < FAKE_CONNS; i++)
        if (s->c[i].fd >= 0)
            fake_drop(&s->c[i]);
    return NULL;
}


static void
fake_start(fake_t *s)
{
    int i;

    memset(s, 0, sizeof(*s));
    for (i = 0; i < FAKE_CONNS; i++)
        s->c[i].fd = -1;
    s->lfd = listen_any(&s->port);
    s->wake = eventfd(0, EFD_CLOEXEC);
    assert_int_equal(pthread_create(&s->th, NULL, fake_main, s), 0);
}


static void
fake_stop(fake_t *s)
{
    uint64_t one = 1;

    (void)!write(s->wake, &one, sizeof(one));
    pthread_join(s->th, NULL);
    close(s->wake);
    close(s->lfd);
}

/* ---- scenario: the RPC client ------------------------------------------ */

#define RPC_CALLS 7 /* 0-4 from the loop, 5-6 from another thread */

typedef struct {
    uint32_t cmd;
    size_t len;
    _Atomic bool started; /* zn_rpc_call() returned 0 */
    _Atomic int done;     /* callbacks run */
} rpc_call_t;

typedef struct {
    zn_rpc_t *r;
    rpc_call_t c[RPC_CALLS];
    _Atomic bool helper_done;
} rpc_fx_t;

static const struct {
    uint32_t cmd;
    size_t len;
} rpc_plan[RPC_CALLS] = {{CMD_TEST, 0},      {CMD_ECHO, 10},  {CMD_ECHO, 3000},
                         {CMD_ECHO, 70000},  {CMD_NOREPLY, 0}, {CMD_ECHO, 100},
                         {CMD_ECHO, 5000}};


/* The statuses a call may end with here (none times out: the server
 * answers everything it gets). */
static bool
rpc_status_ok(int status, uint32_t cmd)
{
    switch (status) {
    case 0:
        return cmd != CMD_NOREPLY;
    case ZN_EPROTO:
        return cmd == CMD_NOREPLY;
    case ZN_ENOMEM:
    case ZN_ECONNRESET:
    case ZN_ENOTCONN:
        return true;
    case ZN_ETIMEDOUT:
        return fa_silence();
    default:
        return false;
    }
}


static void
rpc_check_rsp(uint32_t cmd, size_t len, const ProtobufCMessage *rsp)
{
    const Demo__EchoRsp *e = (const Demo__EchoRsp *)rsp;

    if (cmd == CMD_TEST) {
        FA_NOTE(strcmp(((const Demo__TestRsp *)rsp)->res, hello) == 0);
        return;
    }
    FA_NOTE_RC(e->payload.len == len, e->payload.len);
    FA_NOTE(tu_pattern_check(e->payload.data, e->payload.len, 7, 0));
}


/* Each call ends exactly once, with an allowed status; a response is
 * checked against what was asked. */
static void
rpc_cb(int status, const ProtobufCMessage *rsp, const zn_rpc_error_t *err,
       void *ud)
{
    rpc_call_t *c = ud;

    FA_NOTE_RC(atomic_fetch_add(&c->done, 1) == 0, c->cmd);
    FA_NOTE_RC(rpc_status_ok(status, c->cmd), status);
    if (status == ZN_EPROTO)
        FA_NOTE_RC(err != NULL && err->code == 1000, err ? err->code : 0);
    if (status == 0)
        rpc_check_rsp(c->cmd, c->len, rsp);
}


/* Starts call i of the plan, on whichever thread calls this (posted from
 * another thread); remembers whether it started, i.e. owes a callback. */
static int
rpc_start(rpc_fx_t *fx, int i)
{
    static uint8_t payload[80000];
    Demo__TestReq t = DEMO__TEST_REQ__INIT;
    Demo__EchoReq e = DEMO__ECHO_REQ__INIT;
    rpc_call_t *c = &fx->c[i];
    int rc;

    c->cmd = rpc_plan[i].cmd;
    c->len = rpc_plan[i].len;
    tu_pattern(payload, c->len, 7, 0);
    e.payload.data = payload;
    e.payload.len = c->len;
    t.msg = "hi";
    if (c->cmd == CMD_ECHO)
        rc = zn_rpc_call(fx->r, c->cmd, &e.base, &demo__echo_rsp__descriptor,
                         0, rpc_cb, c);
    else
        rc = zn_rpc_call(fx->r, c->cmd, &t.base, &demo__test_rsp__descriptor,
                         0, rpc_cb, c);
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM || rc == ZN_ENOTCONN, rc);
    atomic_store(&c->started, rc == 0);
    return rc;
}


/* A blocking call from a thread that is not the loop's. */
static void
rpc_sync(rpc_fx_t *fx)
{
    Demo__TestReq t = DEMO__TEST_REQ__INIT;
    ProtobufCMessage *rsp;
    int rc;

    t.msg = "hi";
    rc = zn_rpc_call_sync(fx->r, CMD_TEST, &t.base, &demo__test_rsp__descriptor,
                          0, &rsp, NULL, NULL, 0);
    FA_NOTE_RC(rc == 0 || rpc_status_ok(rc, CMD_TEST), rc);
    if (rc == 0)
        rpc_check_rsp(CMD_TEST, 0, rsp);
    zn_rpc_msg_free(rsp);
}


/* The calls of a thread that is not the loop's: posted, blocking, ONEWAY. */
static void *
rpc_helper(void *arg)
{
    rpc_fx_t *fx = arg;
    Demo__TestReq t = DEMO__TEST_REQ__INIT;
    int rc;

    (void)rpc_start(fx, 5);
    rpc_sync(fx);
    (void)rpc_start(fx, 6);
    t.msg = "one way";
    rc = zn_rpc_send_oneway(fx->r, CMD_TEST, &t.base);
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM || rc == ZN_ENOTCONN, rc);
    atomic_store(&fx->helper_done, true);
    return NULL;
}


static bool
rpc_all_done(rpc_fx_t *fx)
{
    int i;

    if (!atomic_load(&fx->helper_done))
        return false;
    for (i = 0; i < RPC_CALLS; i++)
        if (atomic_load(&fx->c[i].started) && atomic_load(&fx->c[i].done) == 0)
            return false;
    return true;
}


/* Creates the client (quick reconnects, 2 s deadlines; 300 ms where a
 * silent failure is allowed). Returns 0 or the (expected) error. */
static int
rpc_new(zn_loop_t *loop, uint16_t port, zn_rpc_t **r)
{
    zn_rpc_opts_t o;
    int rc;

    zn_rpc_opts_default(&o);
    o.client.host = "127.0.0.1";
    o.client.port = port;
    o.client.reconnect = true;
    o.client.backoff_min_ms = 1;
    o.client.backoff_max_ms = 4;
    o.client.max_retries = 3;
    o.timeout_ms = fa_ctx.lenient ? 300 : 2000;
    rc = zn_rpc_new(loop, &o, r);
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM, rc);
    return rc;
}


/*
 * Calls from the loop (pipelined, small and large), from another thread
 * (posted, and one blocking), and a ONEWAY; the loop runs until every
 * call that started has had its callback. Then the client is freed.
 */
static void
sc_rpc(const void *arg)
{
    static rpc_fx_t fx;
    zn_loop_t *loop;
    fake_t fake;
    pthread_t th;
    uint64_t end;
    int i;

    (void)arg;
    memset(&fx, 0, sizeof(fx));
    fake_start(&fake);
    if ((i = zn_loop_new(&loop)) != 0) {
        FA_NOTE_RC(i == ZN_ENOMEM, i);
    } else if (rpc_new(loop, fake.port, &fx.r) != 0) {
        zn_loop_free(loop);
    } else {
        for (i = 0; i < 5; i++)
            (void)rpc_start(&fx, i);
        assert_int_equal(pthread_create(&th, NULL, rpc_helper, &fx), 0);
        for (end = zn_now_ms() + 5000; !rpc_all_done(&fx) &&
                                       zn_now_ms() < end;)
            zn_loop_run_once(loop, 2);
        FA_NOTE(rpc_all_done(&fx));
        pthread_join(th, NULL);
        fa_teardown();
        zn_rpc_free(fx.r);
        zn_loop_free(loop);
    }
    fake_stop(&fake);
    for (i = 0; i < RPC_CALLS; i++)
        FA_NOTE_RC(atomic_load(&fx.c[i].done) == atomic_load(&fx.c[i].started),
                   i);
}

/* ---- the sweeps -------------------------------------------------------- */

static const model_t single = {0, 0}, io_workers = {1, 2};


static void
test_service_single_loop(void **state)
{
    fa_scenario_t s = {"svc-single", sc_service, &single, 20, true};

    (void)state;
    fa_sweep(&s);
}


static void
test_service_io_loop_and_workers(void **state)
{
    fa_scenario_t s = {"svc-workers", sc_service, &io_workers, 20, true};

    (void)state;
    fa_sweep(&s);
}


static void
test_rpc_client_calls(void **state)
{
    fa_scenario_t s = {"rpc", sc_rpc, NULL, 20, true};

    (void)state;
    fa_sweep(&s);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_service_single_loop),
        cmocka_unit_test(test_service_io_loop_and_workers),
        cmocka_unit_test(test_rpc_client_calls),
    };

    fa_install();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
