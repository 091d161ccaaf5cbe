/*
 * test_msg.c: the message service over loopback, in each threading model
 * (single loop; 4 workers; 2 IO loops; 2 IO loops + 4 workers): replies,
 * error replies, ONEWAY, pushes, pipelining, limits, every row of the
 * bad-input table, hostile bodies, the worker queue, late replies.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "hostile.pb-c.h"
#include "testutil.h"
#include "znet/msg.h"
#include "znet/znet.pb-c.h"

enum { CMD_TEST = 1, CMD_ECHO = 2, CMD_COUNT = 3, CMD_PUSH = 4,
       CMD_SLOW = 5, CMD_DEFER = 6, CMD_NODE = 7, CMD_BOMB = 8,
       CMD_NOREPLY = 9, CMD_ORDER = 10, PUSHED = 100 };

typedef struct {
    const char *name;
    unsigned io_threads, workers;
} model_t;

static model_t models[] = {
    {"single", 0, 0}, {"workers", 0, 4}, {"io", 2, 0}, {"io+workers", 2, 4}};

/* Shared with the handlers (which may run on workers). */
static _Atomic int oneway_count;
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open = 1;
static _Atomic(zn_msg_req_t *) deferred;

/* What h_order saw: per client connection (payload[0]), the thread of its
 * first request and whether a later one ran on another. */
#define ORDER_CONNS 4
static _Atomic(unsigned long) order_thread[ORDER_CONNS];
static _Atomic int order_moved[ORDER_CONNS];

typedef struct {
    zn_msg_table_t *table;
    zn_msg_service_t *svc;
    tu_server_t ts;
} fx_t;

/* ---- handlers -------------------------------------------------------- */


static void
h_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "hello, i'm server";
    assert_int_equal(zn_msg_reply(req, &rsp.base), 0);
    assert_int_equal(zn_msg_reply(req, &rsp.base), ZN_EALREADY);
}


static void
h_echo(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;

    (void)ud;
    rsp.payload = ((const Demo__EchoReq *)msg)->payload;
    zn_msg_reply(req, &rsp.base);
}


static void
h_count(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    (void)msg;
    (void)ud;
    assert_true(zn_msg_req_oneway(req));
    atomic_fetch_add(&oneway_count, 1);
    assert_int_equal(zn_msg_reply_error(req, 1000, "ignored"), 0);
}


static void
h_push(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp note = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    note.res = "pushed";
    assert_int_equal(zn_msg_push(zn_msg_req_conn(req), PUSHED, &note.base),
                     0);
    h_test(req, msg, ud);
}


/* Waits at the gate (a worker stays busy while it is closed). */
/* An echo that records its thread; a request whose seq is 1 mod 4 takes
 * 3 ms, so that on free workers its successors would overtake it. */
static void
h_order(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    unsigned long self = (unsigned long)pthread_self(), none = 0;
    unsigned k = in->payload.len > 0 ? in->payload.data[0] : 0;

    if (k < ORDER_CONNS &&
        !atomic_compare_exchange_strong(&order_thread[k], &none, self) &&
        none != self)
        atomic_store(&order_moved[k], 1);
    if (zn_msg_req_seq(req) % 4 == 1)
        usleep(3000);
    h_echo(req, msg, ud);
}


static void
h_slow(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    pthread_mutex_lock(&gate_mu);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    h_echo(req, msg, ud);
}


static void
h_defer(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    (void)msg;
    (void)ud;
    zn_msg_req_defer(req);
    atomic_store(&deferred, req);
}


static void
h_ok(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "decoded";
    zn_msg_reply(req, &rsp.base);
}


static void
h_noreply(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    (void)req;
    (void)msg;
    (void)ud;
}


static void
set_gate(int open)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = open;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* ---- fixture --------------------------------------------------------- */


static void
fx_start(fx_t *fx, const model_t *m, zn_msg_opts_t *mo)
{
    zn_msg_opts_t defaults;
    zn_server_opts_t so;
    zn_msg_table_t *t;

    if (mo == NULL) {
        zn_msg_opts_default(&defaults);
        mo = &defaults;
    }
    mo->workers = m->workers;
    assert_int_equal(zn_msg_table_new(&t), 0);
    assert_int_equal(zn_msg_table_register(t, CMD_TEST,
                                           &demo__test_req__descriptor,
                                           h_test, NULL), 0);
    assert_int_equal(zn_msg_table_register(t, CMD_TEST,
                                           &demo__test_req__descriptor,
                                           h_test, NULL), ZN_EEXIST);
    zn_msg_table_register(t, CMD_ECHO, &demo__echo_req__descriptor, h_echo,
                          NULL);
    zn_msg_table_register(t, CMD_COUNT, &demo__test_req__descriptor, h_count,
                          NULL);
    zn_msg_table_register(t, CMD_PUSH, &demo__test_req__descriptor, h_push,
                          NULL);
    zn_msg_table_register(t, CMD_SLOW, &demo__echo_req__descriptor, h_slow,
                          NULL);
    zn_msg_table_register(t, CMD_DEFER, &demo__test_req__descriptor,
                          h_defer, NULL);
    zn_msg_table_register(t, CMD_NODE, &zntest__node__descriptor, h_ok, NULL);
    zn_msg_table_register(t, CMD_BOMB, &zntest__bomb__descriptor, h_ok, NULL);
    zn_msg_table_register(t, CMD_NOREPLY, &demo__test_req__descriptor,
                          h_noreply, NULL);
    zn_msg_table_register(t, CMD_ORDER, &demo__echo_req__descriptor, h_order,
                          NULL);
    fx->table = t;
    assert_int_equal(zn_msg_service_new(t, mo, &fx->svc), 0);
    assert_int_equal(zn_msg_table_register(t, 99, &demo__test_req__descriptor,
                                           h_test, NULL), ZN_EINVAL);
    zn_server_opts_default(&so);
    so.io_threads = m->io_threads;
    zn_msg_service_bind(fx->svc, &so);
    tu_server_start(&fx->ts, &so);
}


static void
fx_stop(fx_t *fx)
{
    set_gate(1);
    zn_msg_service_stop(fx->svc);
    tu_server_stop(&fx->ts);
    zn_msg_service_free(fx->svc);
    zn_msg_table_free(fx->table);
}


static zn_msg_stats_t
fx_stats(fx_t *fx)
{
    zn_msg_stats_t st;

    zn_msg_service_stats(fx->svc, &st);
    return st;
}

/* ---- a blocking protocol v1 client ------------------------------------ */

typedef struct {
    zn_frame_header_t h;
    uint8_t *body;
} rframe_t;


static void
send_msg(int fd, uint32_t cmd, uint32_t seq, uint8_t flags,
         const ProtobufCMessage *msg)
{
    uint8_t *p;
    size_t n;

    assert_int_equal(zn_msg_pack_frame(cmd, seq, flags, msg, &p, &n), 0);
    tu_write_all(fd, p, n);
    zn_msg_frame_free(p);
}


static void
send_raw(int fd, uint32_t cmd, uint32_t seq, uint8_t flags, const void *body,
         size_t len)
{
    zn_frame_header_t h = {(uint32_t)len, cmd, seq, flags};
    uint8_t hdr[ZN_FRAME_HEADER_SIZE];

    assert_int_equal(zn_frame_encode_header(hdr, &h), 0);
    tu_write_all(fd, hdr, sizeof(hdr));
    if (len > 0)
        tu_write_all(fd, body, len);
}


/* Reads one frame; returns 0, or -1 at EOF/error. */
static int
recv_frame(int fd, rframe_t *f)
{
    uint8_t hdr[ZN_FRAME_HEADER_SIZE];
    zn_frame_reason_t why;

    f->body = NULL;
    if (tu_read_exact(fd, hdr, sizeof(hdr)) != 0)
        return -1;
    assert_int_equal(zn_frame_decode_header(hdr, sizeof(hdr), UINT32_MAX,
                                            &f->h, &why), 0);
    f->body = malloc(f->h.length + 1);
    if (f->h.length > 0 && tu_read_exact(fd, f->body, f->h.length) != 0)
        return -1;
    return 0;
}


static uint32_t
frame_error_code(const rframe_t *f)
{
    Znet__Error *e;
    uint32_t code;

    assert_true(f->h.flags & ZN_FRAME_F_ERROR);
    e = znet__error__unpack(NULL, f->h.length, f->body);
    assert_non_null(e);
    code = e->code;
    znet__error__free_unpacked(e, NULL);
    return code;
}


static void
expect_test_rsp(int fd, uint32_t seq)
{
    Demo__TestRsp *rsp;
    rframe_t f;

    assert_int_equal(recv_frame(fd, &f), 0);
    assert_int_equal(f.h.flags, ZN_FRAME_F_RESPONSE);
    assert_int_equal(f.h.seq, seq);
    rsp = demo__test_rsp__unpack(NULL, f.h.length, f.body);
    assert_non_null(rsp);
    assert_string_equal(rsp->res, "hello, i'm server");
    demo__test_rsp__free_unpacked(rsp, NULL);
    free(f.body);
}


static void
expect_error(int fd, uint32_t seq, uint32_t code)
{
    rframe_t f;

    assert_int_equal(recv_frame(fd, &f), 0);
    assert_int_equal(f.h.seq, seq);
    assert_int_equal(f.h.flags, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR);
    assert_int_equal(frame_error_code(&f), code);
    free(f.body);
}


static void
call_test(int fd, uint32_t seq)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;

    req.msg = "hi";
    send_msg(fd, CMD_TEST, seq, 0, &req.base);
    expect_test_rsp(fd, seq);
}


/* True if the peer closed (EOF or reset) within `ms`. */
static bool
closed_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char buf[4096];
    ssize_t r;

    while (poll(&p, 1, ms) == 1) {
        r = recv(fd, buf, sizeof(buf), 0);
        if (r <= 0)
            return true;
    }
    return false;
}

/* ---- replies ---------------------------------------------------------- */


static void
test_cmd1_gets_the_seeds_reply(void **state)
{
    fx_t fx;
    int fd;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    call_test(fd, 7);
    call_test(fd, 8);
    close(fd);
    fx_stop(&fx);
}


static void
echo_of_size(int fd, size_t n, uint32_t seq)
{
    Demo__EchoReq req = DEMO__ECHO_REQ__INIT;
    Demo__EchoRsp *rsp;
    rframe_t f;

    req.payload.len = n;
    req.payload.data = malloc(n + 1);
    tu_pattern(req.payload.data, n, seq, 0);
    send_msg(fd, CMD_ECHO, seq, 0, &req.base);
    assert_int_equal(recv_frame(fd, &f), 0);
    assert_int_equal(f.h.flags, ZN_FRAME_F_RESPONSE);
    rsp = demo__echo_rsp__unpack(NULL, f.h.length, f.body);
    assert_non_null(rsp);
    assert_int_equal(rsp->payload.len, n);
    assert_true(n == 0 ||
                memcmp(rsp->payload.data, req.payload.data, n) == 0);
    demo__echo_rsp__free_unpacked(rsp, NULL);
    free(f.body);
    free(req.payload.data);
}


static void
test_echo_up_to_the_body_limit_and_one_over(void **state)
{
    enum { LIMIT = 256 * 1024 };
    zn_msg_opts_t mo;
    uint8_t *body;
    fx_t fx;
    int fd;

    zn_msg_opts_default(&mo);
    mo.max_body = LIMIT;
    fx_start(&fx, *state, &mo);
    fd = tu_connect(fx.ts.port);
    echo_of_size(fd, 0, 1);
    echo_of_size(fd, 1, 2);
    echo_of_size(fd, 100000, 3);
    echo_of_size(fd, LIMIT - 8, 4); /* body = 4 bytes of framing + data */
    /* A body of exactly LIMIT bytes is accepted (undecodable: BAD_REQUEST)
     * and one more byte closes the connection before the body is read. */
    body = calloc(1, LIMIT + 1);
    send_raw(fd, CMD_ECHO, 5, 0, body, LIMIT);
    expect_error(fd, 5, ZN_CODE_BAD_REQUEST);
    send_raw(fd, CMD_ECHO, 6, 0, NULL, 0);
    {
        zn_frame_header_t h = {LIMIT + 1, CMD_ECHO, 6, 0};
        uint8_t hdr[16];
        zn_frame_encode_header(hdr, &h);
        tu_write_all(fd, hdr, 16); /* header only */
    }
    assert_true(closed_within(fd, 5000));
    assert_int_equal(fx_stats(&fx).too_large, 1);
    free(body);
    close(fd);
    fx_stop(&fx);
}


static void
test_unknown_cmd_and_bad_body_get_errors_and_stay_open(void **state)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    zn_msg_stats_t st;
    fx_t fx;
    int fd;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    send_raw(fd, 4242, 1, 0, NULL, 0);
    expect_error(fd, 1, ZN_CODE_UNKNOWN_CMD);
    send_raw(fd, CMD_TEST, 2, 0, junk, sizeof(junk));
    expect_error(fd, 2, ZN_CODE_BAD_REQUEST);
    call_test(fd, 3); /* still open */
    st = fx_stats(&fx);
    assert_int_equal(st.errors_sent[ZN_CODE_UNKNOWN_CMD], 1);
    assert_int_equal(st.errors_sent[ZN_CODE_BAD_REQUEST], 1);
    close(fd);
    fx_stop(&fx);
}


static int oneway_target;


static int
oneway_done(void *ud)
{
    (void)ud;
    return atomic_load(&oneway_count) >= oneway_target;
}


static void
test_oneway_gets_no_response_not_even_an_error(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    fx_t fx;
    int fd, before = atomic_load(&oneway_count);

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    send_msg(fd, CMD_COUNT, 1, ZN_FRAME_F_ONEWAY, &req.base);
    send_raw(fd, 4242, 2, ZN_FRAME_F_ONEWAY, NULL, 0); /* unknown: silent */
    call_test(fd, 3); /* the first frame back answers seq 3 */
    /* With workers the ONEWAY handler may still be running elsewhere. */
    oneway_target = before + 1;
    assert_true(tu_wait_until(oneway_done, NULL, 5000));
    assert_int_equal(atomic_load(&oneway_count), before + 1);
    assert_int_equal(fx_stats(&fx).oneway, 2);
    close(fd);
    fx_stop(&fx);
}


static void
test_handler_push_arrives_before_its_reply(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    rframe_t f;
    fx_t fx;
    int fd;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    send_msg(fd, CMD_PUSH, 9, 0, &req.base);
    assert_int_equal(recv_frame(fd, &f), 0);
    assert_int_equal(f.h.cmd, PUSHED);
    assert_int_equal(f.h.flags, ZN_FRAME_F_ONEWAY);
    free(f.body);
    expect_test_rsp(fd, 9);
    close(fd);
    fx_stop(&fx);
}


static void
test_pipelined_1000_requests_all_answered(void **state)
{
    enum { N = 1000 };
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    static uint8_t seen[N + 1];
    size_t len = 0, one;
    uint8_t *all = NULL, *p;
    rframe_t f;
    fx_t fx;
    int fd, i;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    req.msg = "x";
    for (i = 1; i <= N; i++) { /* one write of 1000 frames */
        assert_int_equal(zn_msg_pack_frame(CMD_TEST, i, 0, &req.base, &p,
                                           &one), 0);
        all = realloc(all, len + one);
        memcpy(all + len, p, one);
        len += one;
        zn_msg_frame_free(p);
    }
    tu_write_all(fd, all, len);
    memset(seen, 0, sizeof(seen));
    for (i = 0; i < N; i++) {
        assert_int_equal(recv_frame(fd, &f), 0);
        assert_true(f.h.seq >= 1 && f.h.seq <= N);
        assert_int_equal(seen[f.h.seq], 0);
        seen[f.h.seq] = 1;
        free(f.body);
    }
    free(all);
    close(fd);
    fx_stop(&fx);
}

/* ---- the bad-input table ---------------------------------------------- */


static void
test_bad_headers_close_only_that_connection(void **state)
{
    static const uint8_t bad[3][16] = {
        {'z', 'x', 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}, /* magic */
        {'z', 'n', 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}, /* version */
        {'z', 'n', 1, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}, /* flags */
    };
    fx_t fx;
    int fd, good, i;

    fx_start(&fx, *state, NULL);
    good = tu_connect(fx.ts.port);
    for (i = 0; i < 3; i++) {
        fd = tu_connect(fx.ts.port);
        tu_write_all(fd, bad[i], 16);
        assert_true(closed_within(fd, 5000));
        close(fd);
        call_test(good, (uint32_t)i + 1); /* the other client is served */
    }
    assert_int_equal(fx_stats(&fx).bad_frames, 3);
    close(good);
    fx_stop(&fx);
}


static int
one_deadline_close(void *ud)
{
    return fx_stats(ud).deadline_closes == 1;
}


static void
test_partial_frame_closed_at_frame_deadline(void **state)
{
    static const uint8_t half[8] = {'z', 'n', 1, 0, 0, 0, 0, 4};
    zn_msg_opts_t mo;
    uint64_t t0;
    fx_t fx;
    int fd, good;

    zn_msg_opts_default(&mo);
    mo.frame_deadline_ms = 200;
    fx_start(&fx, *state, &mo);
    good = tu_connect(fx.ts.port);
    fd = tu_connect(fx.ts.port);
    t0 = zn_now_ms();
    tu_write_all(fd, half, sizeof(half));
    usleep(100000);
    tu_write_all(fd, half, 2); /* more bytes do not move the deadline */
    call_test(good, 1);
    assert_true(closed_within(fd, 5000));
    assert_true(zn_now_ms() - t0 >= 190);
    assert_true(tu_wait_until(one_deadline_close, &fx, 5000));
    call_test(good, 2);
    close(fd);
    close(good);
    fx_stop(&fx);
}


static void
test_response_frames_sent_to_server_are_dropped(void **state)
{
    fx_t fx;
    int fd;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    send_raw(fd, CMD_TEST, 77, ZN_FRAME_F_RESPONSE, NULL, 0);
    call_test(fd, 78);
    assert_int_equal(fx_stats(&fx).responses_dropped, 1);
    close(fd);
    fx_stop(&fx);
}


static void
test_half_close_answers_then_closes(void **state)
{
    Demo__EchoReq req = DEMO__ECHO_REQ__INIT;
    rframe_t f;
    fx_t fx;
    int fd, i;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    set_gate(0); /* the slow handler holds them in flight */
    for (i = 1; i <= 5; i++)
        send_msg(fd, CMD_SLOW, (uint32_t)i, 0, &req.base);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    if (((model_t *)*state)->workers > 0) {
        usleep(50000);
        set_gate(1);
    } else {
        set_gate(1); /* on the loop the gate must be open at once */
    }
    for (i = 1; i <= 5; i++) {
        assert_int_equal(recv_frame(fd, &f), 0);
        assert_int_equal(f.h.flags, ZN_FRAME_F_RESPONSE);
        free(f.body);
    }
    assert_true(closed_within(fd, 5000));
    close(fd);
    fx_stop(&fx);
}


static void
test_shutting_down_answers_new_requests(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    fx_t fx;
    int fd;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    call_test(fd, 1);
    zn_msg_service_shutdown(fx.svc);
    send_msg(fd, CMD_TEST, 2, 0, &req.base);
    expect_error(fd, 2, ZN_CODE_SHUTTING_DOWN);
    close(fd);
    fx_stop(&fx);
}


static void
test_handler_without_reply_gets_internal(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    fx_t fx;
    int fd;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    send_msg(fd, CMD_NOREPLY, 5, 0, &req.base);
    expect_error(fd, 5, ZN_CODE_INTERNAL);
    close(fd);
    fx_stop(&fx);
}

/* ---- hostile bodies ---------------------------------------------------- */


/* A Node nested `depth` levels: each level is tag 0x0a + length + child. */
static uint8_t *
nested_body(unsigned depth, size_t *len)
{
    size_t cap = (size_t)depth * 6 + 16, n = 0, inner, k;
    uint8_t *buf = malloc(cap), *tmp = malloc(cap);
    unsigned i;

    for (i = 0; i < depth; i++) {
        inner = n;
        k = 0;
        tmp[k++] = 0x0a;
        for (size_t v = inner; ; v >>= 7) { /* varint length */
            tmp[k++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
            if (v <= 0x7f)
                break;
        }
        memcpy(tmp + k, buf, inner);
        n = k + inner;
        memcpy(buf, tmp, n);
    }
    free(tmp);
    *len = n;
    return buf;
}


static void
test_hostile_bodies_get_bad_request_server_alive(void **state)
{
    uint8_t *body;
    size_t len, i;
    fx_t fx;
    int fd;

    fx_start(&fx, *state, NULL);
    fd = tu_connect(fx.ts.port);
    body = nested_body(10000, &len); /* would overflow protobuf-c's stack */
    send_raw(fd, CMD_NODE, 1, 0, body, len);
    expect_error(fd, 1, ZN_CODE_BAD_REQUEST);
    free(body);
    body = nested_body(60, &len); /* within the limit: decoded */
    send_raw(fd, CMD_NODE, 2, 0, body, len);
    {
        rframe_t f;
        assert_int_equal(recv_frame(fd, &f), 0);
        assert_int_equal(f.h.flags, ZN_FRAME_F_RESPONSE);
        free(f.body);
    }
    free(body);
    /* An allocation bomb: 1.5 MB of empty repeated sub-messages. */
    len = 1500000;
    body = malloc(len);
    for (i = 0; i + 1 < len; i += 2) {
        body[i] = 0x0a;
        body[i + 1] = 0x00;
    }
    send_raw(fd, CMD_BOMB, 3, 0, body, len);
    expect_error(fd, 3, ZN_CODE_BAD_REQUEST);
    /* Random bodies: answered (decoded or BAD_REQUEST), never a crash. */
    srand(42);
    for (i = 0; i < 300; i++) {
        size_t n = (size_t)(rand() % 200), k;
        rframe_t f;
        for (k = 0; k < n; k++)
            body[k] = (uint8_t)rand();
        send_raw(fd, CMD_NODE + (i % 2), (uint32_t)(10 + i), 0, body, n);
        assert_int_equal(recv_frame(fd, &f), 0);
        assert_int_equal(f.h.seq, 10 + i);
        free(f.body);
    }
    call_test(fd, 999);
    free(body);
    close(fd);
    fx_stop(&fx);
}

/* ---- workers and lifetime ---------------------------------------------- */


/* All four workers hold a request and none waits in the queue. */
static int
workers_busy(void *ud)
{
    zn_msg_stats_t st = fx_stats(ud);

    return st.in_flight == 4 && st.queued == 0;
}


static void
test_full_worker_queue_answers_overloaded_then_recovers(void **state)
{
    enum { N = 12 };
    Demo__EchoReq req = DEMO__ECHO_REQ__INIT;
    const model_t *m = *state;
    zn_msg_opts_t mo;
    int overloaded = 0, ok = 0, i, fd;
    rframe_t f;
    fx_t fx;

    zn_msg_opts_default(&mo);
    mo.queue_max = 4;
    fx_start(&fx, m, &mo);
    fd = tu_connect(fx.ts.port);
    set_gate(0); /* every worker blocks on its first request */
    for (i = 1; i <= 4; i++)
        send_msg(fd, CMD_SLOW, (uint32_t)i, 0, &req.base);
    assert_true(tu_wait_until(workers_busy, &fx, 5000));
    for (i = 5; i <= N; i++)
        send_msg(fd, CMD_SLOW, (uint32_t)i, 0, &req.base);
    /* 4 running + 4 queued; the rest is refused at once */
    for (i = 0; i < N - 8; i++) {
        assert_int_equal(recv_frame(fd, &f), 0);
        assert_int_equal(frame_error_code(&f), ZN_CODE_OVERLOADED);
        overloaded++;
        free(f.body);
    }
    set_gate(1);
    for (i = 0; i < 8; i++) {
        assert_int_equal(recv_frame(fd, &f), 0);
        assert_int_equal(f.h.flags, ZN_FRAME_F_RESPONSE);
        ok++;
        free(f.body);
    }
    assert_int_equal(overloaded, N - 8);
    assert_int_equal(fx_stats(&fx).overloaded, N - 8);
    call_test(fd, 100); /* recovered */
    close(fd);
    fx_stop(&fx);
}


static int
has_deferred(void *ud)
{
    (void)ud;
    return atomic_load(&deferred) != NULL;
}


static int
conns_zero(void *ud)
{
    return tu_server_stats(&((fx_t *)ud)->ts).conns_live == 0;
}


/*
 * The handler keeps the request; the client goes away; a new client comes
 * (on the server it likely gets the same fd number); then the old request
 * is answered. The answer must not reach the new client.
 */
static void
test_late_reply_never_reaches_a_new_conn_on_the_same_fd(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;
    zn_msg_req_t *held;
    fx_t fx;
    int fd;

    fx_start(&fx, *state, NULL);
    atomic_store(&deferred, NULL);
    fd = tu_connect(fx.ts.port);
    send_msg(fd, CMD_DEFER, 1, 0, &req.base);
    assert_true(tu_wait_until(has_deferred, NULL, 5000));
    /* A reset, not a FIN: a FIN would be a half-close, which waits for
     * the answer before it closes. */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &(struct linger){1, 0},
               sizeof(struct linger));
    close(fd);
    assert_true(tu_wait_until(conns_zero, &fx, 5000));
    fd = tu_connect(fx.ts.port);
    call_test(fd, 2);
    held = atomic_exchange(&deferred, NULL);
    rsp.res = "late";
    /* From this thread, to a connection known closed: refused at once. */
    assert_int_equal(zn_msg_reply(held, &rsp.base), ZN_ENOTCONN);
    usleep(50000);
    call_test(fd, 3); /* the next frame is ours, not the late one */
    assert_int_equal(fx_stats(&fx).late_replies, 1);
    close(fd);
    fx_stop(&fx);
}


static int
one_idle_close(void *ud)
{
    return tu_server_stats(&((fx_t *)ud)->ts).closes[ZN_CLOSE_IDLE] == 1;
}


/*
 * The idle time-out (msg.h) counts silence only: not a wait for a slow
 * answer (a deferred request, 3 time-outs long), nor a frame that is still
 * coming in byte by byte (no frame complete for 2.7 time-outs); then
 * silence closes the connection, as idle, one time-out after the last
 * byte.
 */
static void
test_idle_time_out_counts_silence_only(void **state)
{
    static const uint8_t half[8] = {'z', 'n', 1, 0, 0, 0, 0, 4};
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;
    zn_msg_req_t *held;
    zn_msg_opts_t mo;
    uint64_t t0;
    rframe_t f;
    fx_t fx;
    int fd, i;

    zn_msg_opts_default(&mo);
    mo.idle_ms = 300;
    fx_start(&fx, *state, &mo);
    atomic_store(&deferred, NULL);
    fd = tu_connect(fx.ts.port);
    send_msg(fd, CMD_DEFER, 1, 0, &req.base);
    assert_true(tu_wait_until(has_deferred, NULL, 5000));
    assert_false(closed_within(fd, 900)); /* waiting is not idle */
    held = atomic_exchange(&deferred, NULL);
    rsp.res = "at last";
    assert_int_equal(zn_msg_reply(held, &rsp.base), 0);
    assert_int_equal(recv_frame(fd, &f), 0);
    assert_int_equal(f.h.seq, 1);
    assert_int_equal(f.h.flags, ZN_FRAME_F_RESPONSE);
    free(f.body);
    for (i = 0; i < 8; i++) { /* input, though no frame is complete */
        tu_write_all(fd, &half[i], 1);
        assert_false(closed_within(fd, 100));
    }
    t0 = zn_now_ms();
    assert_true(closed_within(fd, 5000));
    assert_true(zn_now_ms() - t0 >= 190);
    assert_true(tu_wait_until(one_idle_close, &fx, 5000));
    assert_int_equal(fx_stats(&fx).deadline_closes, 0);
    close(fd);
    fx_stop(&fx);
}


/*
 * Ordered worker mode: each connection's requests run on one worker, so
 * that 100 pipelined requests are answered in order even where one in
 * four takes 3 ms (on free workers the next ones would overtake it), while
 * the connections are spread over more than one worker.
 */
static void
test_ordered_mode_keeps_each_connections_order(void **state)
{
    Demo__EchoReq req = DEMO__ECHO_REQ__INIT;
    unsigned long threads[ORDER_CONNS];
    int fd[ORDER_CONNS], k, i, distinct = 0;
    uint8_t payload[2];
    zn_msg_opts_t mo;
    rframe_t f;
    fx_t fx;

    zn_msg_opts_default(&mo);
    mo.ordered = true;
    fx_start(&fx, *state, &mo);
    for (k = 0; k < ORDER_CONNS; k++) {
        atomic_store(&order_thread[k], 0);
        atomic_store(&order_moved[k], 0);
        fd[k] = tu_connect(fx.ts.port);
    }
    req.payload.data = payload;
    req.payload.len = sizeof(payload);
    for (i = 1; i <= 100; i++) {
        for (k = 0; k < ORDER_CONNS; k++) {
            payload[0] = (uint8_t)k;
            payload[1] = (uint8_t)i;
            send_msg(fd[k], CMD_ORDER, (uint32_t)i, 0, &req.base);
        }
    }
    for (k = 0; k < ORDER_CONNS; k++) {
        for (i = 1; i <= 100; i++) {
            assert_int_equal(recv_frame(fd[k], &f), 0);
            assert_int_equal(f.h.flags, ZN_FRAME_F_RESPONSE);
            assert_int_equal(f.h.seq, (uint32_t)i);
            free(f.body);
        }
        close(fd[k]);
    }
    for (k = 0; k < ORDER_CONNS; k++) {
        assert_int_equal(atomic_load(&order_moved[k]), 0);
        threads[k] = atomic_load(&order_thread[k]);
        for (i = 0; i < k && threads[i] != threads[k]; i++)
            ;
        distinct += i == k;
    }
    print_message("ordered: %d connections on %d workers\n", ORDER_CONNS,
                  distinct);
    assert_true(distinct >= 2);
    fx_stop(&fx);
}


static void
test_over_max_conns_gets_overloaded_frame(void **state)
{
    zn_msg_opts_t mo;
    zn_server_opts_t so;
    zn_msg_table_t *t;
    zn_msg_service_t *svc;
    tu_server_t ts;
    rframe_t f;
    int a, b;

    (void)state;
    zn_msg_opts_default(&mo);
    assert_int_equal(zn_msg_table_new(&t), 0);
    zn_msg_table_register(t, CMD_TEST, &demo__test_req__descriptor, h_test,
                          NULL);
    assert_int_equal(zn_msg_service_new(t, &mo, &svc), 0);
    zn_server_opts_default(&so);
    so.max_conns = 1;
    zn_msg_service_bind(svc, &so);
    tu_server_start(&ts, &so);
    a = tu_connect(ts.port);
    call_test(a, 1);
    b = tu_connect(ts.port);
    assert_int_equal(recv_frame(b, &f), 0);
    assert_int_equal(f.h.seq, 0);
    assert_int_equal(frame_error_code(&f), ZN_CODE_OVERLOADED);
    free(f.body);
    assert_true(closed_within(b, 5000));
    close(a);
    close(b);
    zn_msg_service_stop(svc);
    tu_server_stop(&ts);
    zn_msg_service_free(svc);
    zn_msg_table_free(t);
}


static _Atomic int sigusr2_seen;


static void
on_sigusr2(int sig)
{
    (void)sig;
    atomic_fetch_add(&sigusr2_seen, 1);
}


/*
 * Every thread znet starts (IO loops, workers) blocks signals, so a
 * process signal goes to the application's threads: here it stays
 * pending, since the test's own threads block it (tu_loop_thread_start
 * starts its thread with signals blocked), and no znet thread may
 * take it (a SIGTERM taken by a worker would kill a server that handles
 * it with a signalfd).
 */
static void
test_library_threads_block_signals(void **state)
{
    struct timespec zero = {0, 0};
    sigset_t set, old;
    fx_t fx;

    signal(SIGUSR2, on_sigusr2);
    fx_start(&fx, *state, NULL); /* znet's threads start from here */
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, &old); /* this thread too */
    kill(getpid(), SIGUSR2);
    usleep(50000);
    assert_int_equal(atomic_load(&sigusr2_seen), 0);
    assert_int_equal(sigtimedwait(&set, NULL, &zero), SIGUSR2);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    signal(SIGUSR2, SIG_DFL);
    fx_stop(&fx);
}


/* A task that holds the loop until the test lets it go. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int held, released;
} hold_t;


static void
hold_task(void *ud)
{
    hold_t *h = ud;

    pthread_mutex_lock(&h->mu);
    h->held = 1;
    pthread_cond_broadcast(&h->cv);
    while (!h->released)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
}


/*
 * The requests that one loop iteration reads, from every connection, go
 * to the worker pool as one chain (one lock, one wake-up), not one per
 * connection: the loop is held while 8 clients each send a request, so
 * that its next iteration reads all eight.
 */
static void
test_one_iteration_hands_its_requests_over_at_once(void **state)
{
    enum { K = 8 };
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    hold_t h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    zn_msg_stats_t st0, st1;
    int fds[K], i;
    fx_t fx;

    fx_start(&fx, *state, NULL);
    for (i = 0; i < K; i++) {
        fds[i] = tu_connect(fx.ts.port);
        call_test(fds[i], (uint32_t)i + 1); /* accepted and warm */
    }
    st0 = fx_stats(&fx);
    assert_int_equal(zn_loop_post(fx.ts.loop, hold_task, &h), 0);
    pthread_mutex_lock(&h.mu);
    while (!h.held)
        pthread_cond_wait(&h.cv, &h.mu);
    pthread_mutex_unlock(&h.mu);
    req.msg = "hi";
    for (i = 0; i < K; i++)
        send_msg(fds[i], CMD_TEST, 100 + (uint32_t)i, 0, &req.base);
    pthread_mutex_lock(&h.mu);
    h.released = 1;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.mu);
    for (i = 0; i < K; i++)
        expect_test_rsp(fds[i], 100 + (uint32_t)i);
    st1 = fx_stats(&fx);
    assert_int_equal(st1.requests - st0.requests, K);
    assert_int_equal(st1.handoffs - st0.handoffs, 1);
    for (i = 0; i < K; i++)
        close(fds[i]);
    fx_stop(&fx);
}


#define PER_MODEL(fn)                                                         \
    cmocka_unit_test_prestate(fn, &models[0]),                               \
        cmocka_unit_test_prestate(fn, &models[1]),                           \
        cmocka_unit_test_prestate(fn, &models[2]),                           \
        cmocka_unit_test_prestate(fn, &models[3])

int
main(void)
{
    const struct CMUnitTest tests[] = {
        PER_MODEL(test_cmd1_gets_the_seeds_reply),
        PER_MODEL(test_echo_up_to_the_body_limit_and_one_over),
        PER_MODEL(test_unknown_cmd_and_bad_body_get_errors_and_stay_open),
        PER_MODEL(test_oneway_gets_no_response_not_even_an_error),
        PER_MODEL(test_handler_push_arrives_before_its_reply),
        PER_MODEL(test_pipelined_1000_requests_all_answered),
        PER_MODEL(test_bad_headers_close_only_that_connection),
        PER_MODEL(test_partial_frame_closed_at_frame_deadline),
        PER_MODEL(test_response_frames_sent_to_server_are_dropped),
        PER_MODEL(test_half_close_answers_then_closes),
        PER_MODEL(test_shutting_down_answers_new_requests),
        PER_MODEL(test_handler_without_reply_gets_internal),
        PER_MODEL(test_hostile_bodies_get_bad_request_server_alive),
        cmocka_unit_test_prestate(
            test_full_worker_queue_answers_overloaded_then_recovers,
            &models[1]),
        cmocka_unit_test_prestate(
            test_full_worker_queue_answers_overloaded_then_recovers,
            &models[3]),
        PER_MODEL(test_late_reply_never_reaches_a_new_conn_on_the_same_fd),
        PER_MODEL(test_idle_time_out_counts_silence_only),
        cmocka_unit_test_prestate(
            test_ordered_mode_keeps_each_connections_order, &models[1]),
        cmocka_unit_test_prestate(
            test_ordered_mode_keeps_each_connections_order, &models[3]),
        cmocka_unit_test_prestate(
            test_one_iteration_hands_its_requests_over_at_once, &models[1]),
        cmocka_unit_test(test_over_max_conns_gets_overloaded_frame),
        cmocka_unit_test_prestate(test_library_threads_block_signals,
                                  &models[3]),
    };

    tu_alarm(300);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
