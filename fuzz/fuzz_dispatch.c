/*
 * fuzz_dispatch.c: libFuzzer target for the message layer as a peer sees
 * it: the frame decoder, the safe protobuf decoding and the dispatcher of
 * a real zn_msg_service_t, with protobuf-c compiled in.
 *
 * The input is the byte stream a client sends. Each run makes a socketpair,
 * adopts one end as a connection of the service on a loop, writes the
 * input into the other end and turns the loop (zn_loop_run_once) until the
 * input is consumed or the connection has closed, reading every reply on
 * the way. Then it closes the connection and turns the loop until the
 * close callback has run and no deferred request is left, so that nothing
 * lives on into the next run (LeakSanitizer checks at exit).
 *
 * The command table mixes the demo's commands with the hostile test types
 * (tests/msg/hostile.proto) and every way a handler can answer:
 *
 *   cmd 1  demo.TestReq  -> TestRsp "hello, i'm server"
 *   cmd 2  demo.EchoReq  -> EchoRsp, the same payload
 *   cmd 3  zntest.Node   -> the same Node (self-nesting: depth limit)
 *   cmd 4  zntest.Bomb   -> application error 1000 (allocation budget)
 *   cmd 5  zntest.Merge  -> no answer: the service answers INTERNAL
 *   cmd 6  zntest.Shapes -> deferred, answered from a posted task
 *
 * Oracle: every byte the service writes must form valid frames with the
 * RESPONSE flag and, for errors, a znet.Error body with a known code. When
 * the input holds no bad header, every complete request without ONEWAY
 * gets exactly one reply with its cmd and seq; otherwise (the connection
 * is closed abortively, its queued replies dropped) no more than that.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "hostile.pb-c.h"
#include "znet/msg.h"
#include "znet/znet.h"
#include "znet/znet.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_CHECK(cond)                                                         \
    do {                                                                       \
        if (!(cond))                                                           \
            fz_fail(#cond, __LINE__);                                          \
    } while (0)

/* Loop turns allowed for one input: each turn moves bytes, so a run that
 * needs more is stuck. */
#define FZ_MAX_TURNS 100000

/* The requests of an input, or the replies to it, as a count and an
 * order-independent digest of (cmd, seq): a deferred reply may overtake. */
typedef struct {
    size_t n;
    uint64_t sum;
} fz_set_t;

/* Everything that lives across runs (reachable, so never a leak). */
static struct {
    zn_loop_t *loop;
    zn_msg_table_t *table;
    zn_msg_service_t *svc;
    zn_handler_t handler; /* the service's, with on_close wrapped */
    zn_handler_t inner;
    zn_conn_limits_t limits;
    unsigned deferred; /* deferred requests not yet answered */
    bool closed;       /* the current connection's on_close ran */
    uint8_t *rx;       /* replies read and not yet parsed */
    size_t rx_len, rx_cap;
} fz;


static void
fz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_dispatch.c:%d: check failed: %s\n", line, what);
    abort();
}


static uint64_t
fz_key(uint32_t cmd, uint32_t seq)
{
    uint64_t h = ((uint64_t)cmd << 32 | seq) * 0x9e3779b97f4a7c15u;

    return h ^ (h >> 29);
}

/* ---- handlers ------------------------------------------------------------ */


static void
on_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "hello, i'm server";
    zn_msg_reply(req, &rsp.base);
}


static void
on_echo(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;

    (void)ud;
    rsp.payload = ((const Demo__EchoReq *)msg)->payload;
    zn_msg_reply(req, &rsp.base);
}


/* Packing the decoded message again walks all of its levels. */
static void
on_same(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    (void)ud;
    zn_msg_reply(req, msg);
}


static void
on_app_error(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    (void)msg;
    (void)ud;
    zn_msg_reply_error(req, ZN_CODE_APP_BASE, "bomb defused");
}


static void
on_silent(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    (void)req;
    (void)msg;
    (void)ud;
}


/* A deferred answer: the message stays with the request until then. */
typedef struct {
    zn_msg_req_t *req;
    const ProtobufCMessage *msg;
} fz_later_t;


static void
fz_answer_later(void *ud)
{
    fz_later_t *l = ud;

    zn_msg_reply(l->req, l->msg);
    free(l);
    fz.deferred--;
}


static void
on_defer(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    fz_later_t *l = malloc(sizeof(*l));

    (void)ud;
    if (l == NULL)
        return;
    l->req = req;
    l->msg = msg;
    zn_msg_req_defer(req);
    fz.deferred++;
    if (zn_loop_post(fz.loop, fz_answer_later, l) != 0)
        fz_answer_later(l);
}

/* ---- set-up, once -------------------------------------------------------- */


static void
fz_on_close(zn_conn_t *c, zn_close_reason_t reason, void *ud)
{
    fz.closed = true;
    fz.inner.on_close(c, reason, ud);
}


/* Bad-input warnings are still formatted (that code runs), not printed. */
static void
fz_log_drop(zn_log_level_t level, const char *file, int line, const char *msg,
            void *ud)
{
    (void)level;
    (void)file;
    (void)line;
    (void)msg;
    (void)ud;
}


static void
fz_setup(void)
{
    zn_server_opts_t so;
    zn_msg_opts_t mo;
    zn_msg_table_t *t;

    zn_log_set_handler(fz_log_drop, NULL);
    FZ_CHECK(zn_msg_table_new(&t) == 0);
    FZ_CHECK(zn_msg_table_register(t, 1, &demo__test_req__descriptor, on_test,
                                   NULL) == 0);
    FZ_CHECK(zn_msg_table_register(t, 2, &demo__echo_req__descriptor, on_echo,
                                   NULL) == 0);
    FZ_CHECK(zn_msg_table_register(t, 3, &zntest__node__descriptor, on_same,
                                   NULL) == 0);
    FZ_CHECK(zn_msg_table_register(t, 4, &zntest__bomb__descriptor,
                                   on_app_error, NULL) == 0);
    FZ_CHECK(zn_msg_table_register(t, 5, &zntest__merge__descriptor, on_silent,
                                   NULL) == 0);
    FZ_CHECK(zn_msg_table_register(t, 6, &zntest__shapes__descriptor, on_defer,
                                   NULL) == 0);
    zn_msg_opts_default(&mo);
    FZ_CHECK(zn_msg_service_new(t, &mo, &fz.svc) == 0);
    FZ_CHECK(zn_loop_new(&fz.loop) == 0);
    fz.table = t;
    /* The limits a server bound to the service would give a connection. */
    zn_server_opts_default(&so);
    zn_msg_service_bind(fz.svc, &so);
    fz.limits = so.limits;
    fz.inner = *zn_msg_service_handler(fz.svc);
    fz.handler = fz.inner;
    fz.handler.on_close = fz_on_close;
}

/* ---- the oracle ---------------------------------------------------------- */


/*
 * The requests in the input that must be answered: complete frames before
 * the first bad header, without RESPONSE (dropped) or ONEWAY. Returns
 * whether the input is free of bad headers.
 */
static bool
fz_expected(const uint8_t *data, size_t size, fz_set_t *want)
{
    zn_frame_reason_t reason;
    size_t off = 0;
    zn_frame_t f;
    int rc;

    while ((rc = zn_frame_next(data + off, size - off,
                               ZN_FRAME_MAX_BODY_DEFAULT, &f, &reason)) == 0) {
        if (!zn_frame_is_response(&f.hdr) && !zn_frame_is_oneway(&f.hdr)) {
            want->n++;
            want->sum += fz_key(f.hdr.cmd, f.hdr.seq);
        }
        off += f.size;
    }
    return rc == ZN_EAGAIN;
}


/* An error response carries a znet.Error with a code the service uses. */
static void
fz_check_error_body(const zn_frame_t *f)
{
    Znet__Error *e = znet__error__unpack(NULL, f->hdr.length, f->body);

    FZ_CHECK(e != NULL);
    FZ_CHECK((e->code >= ZN_CODE_UNKNOWN_CMD && e->code <= ZN_CODE_INTERNAL) ||
             e->code == ZN_CODE_APP_BASE);
    znet__error__free_unpacked(e, NULL);
}


/* Reads what the service wrote and checks every complete frame in it. */
static void
fz_drain(int peer, fz_set_t *got)
{
    zn_frame_t f;
    size_t off = 0;
    ssize_t n;
    int rc;

    for (;;) {
        if (fz.rx_cap - fz.rx_len < 65536) {
            fz.rx_cap = fz.rx_cap * 2 + 65536;
            FZ_CHECK((fz.rx = realloc(fz.rx, fz.rx_cap)) != NULL);
        }
        n = read(peer, fz.rx + fz.rx_len, fz.rx_cap - fz.rx_len);
        if (n <= 0)
            break;
        fz.rx_len += (size_t)n;
    }
    FZ_CHECK(n == 0 || errno == EAGAIN || errno == ECONNRESET);
    while ((rc = zn_frame_next(fz.rx + off, fz.rx_len - off, UINT32_MAX, &f,
                               NULL)) == 0) {
        FZ_CHECK(zn_frame_is_response(&f.hdr));
        FZ_CHECK(!zn_frame_is_oneway(&f.hdr));
        if (zn_frame_is_error(&f.hdr))
            fz_check_error_body(&f);
        got->n++;
        got->sum += fz_key(f.hdr.cmd, f.hdr.seq);
        off += f.size;
    }
    FZ_CHECK(rc == ZN_EAGAIN);
    memmove(fz.rx, fz.rx + off, fz.rx_len - off);
    fz.rx_len -= off;
}

/* ---- one run ------------------------------------------------------------- */


/* Input bytes still in the service's socket, not yet read by the loop. */
static int
fz_unread(zn_conn_t *c)
{
    int n = 0;

    if (ioctl(zn_conn_fd(c), FIONREAD, &n) != 0)
        return 0;
    return n;
}


/* Feeds the input and turns the loop until the service has read all of
 * it and written (and we have read) every answer, or it closed. */
static void
fz_pump(int peer, zn_conn_t *c, const uint8_t *data, size_t size, fz_set_t *got)
{
    size_t off = 0;
    unsigned turns;
    ssize_t n;

    for (turns = 0; turns < FZ_MAX_TURNS; turns++) {
        if (off < size) {
            n = send(peer, data + off, size - off, MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
            else if (errno != EAGAIN)
                off = size; /* the service closed: nothing more to send */
        }
        zn_loop_run_once(fz.loop, 0);
        fz_drain(peer, got);
        if (!zn_conn_is_open(c))
            return;
        if (off == size && fz_unread(c) == 0 && zn_conn_out_len(c) == 0 &&
            fz.deferred == 0)
            return;
    }
    fz_fail("the service stopped making progress", __LINE__);
}


/* Closes the connection and turns the loop until it is gone. */
static void
fz_finish(int peer, zn_conn_t *c, fz_set_t *got)
{
    unsigned turns;

    zn_conn_close(c);
    for (turns = 0; !fz.closed || fz.deferred > 0; turns++) {
        FZ_CHECK(turns < FZ_MAX_TURNS);
        zn_loop_run_once(fz.loop, 0);
        fz_drain(peer, got);
    }
    zn_conn_unref(c);
    zn_loop_run_once(fz.loop, 0);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_set_t want = {0, 0}, got = {0, 0};
    zn_conn_t *c;
    bool clean;
    int sv[2];

    if (fz.loop == NULL)
        fz_setup();
    clean = fz_expected(data, size, &want);
    FZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                        sv) == 0);
    fz.closed = false;
    fz.rx_len = 0;
    FZ_CHECK(zn_conn_adopt(fz.loop, sv[0], &fz.handler, &fz.limits, &c) == 0);
    zn_conn_ref(c);
    fz_pump(sv[1], c, data, size, &got);
    fz_finish(sv[1], c, &got);
    close(sv[1]);
    if (clean) {
        FZ_CHECK(got.n == want.n);
        FZ_CHECK(got.sum == want.sum);
        FZ_CHECK(fz.rx_len == 0);
    } else {
        FZ_CHECK(got.n <= want.n);
    }
    return 0;
}
