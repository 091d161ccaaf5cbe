/*
 * test_stress.c: the threading models under churn. Many connections
 * pipeline requests to slow handlers on workers and are closed at random
 * mid-flight (some with a reset), round after round; afterwards nothing is
 * in flight, no connection is left, and the server still serves. Then a
 * server under load is stopped from another thread. Bounded in time; run
 * under ASan (leaks) and TSan (races) by scripts/test.sh.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "testutil.h"
#include "znet/msg.h"
#include "znet/znet.pb-c.h"

#define CONNS 200
#define ROUNDS 4
#define ROUND_MS 600

typedef struct {
    const char *name;
    unsigned io_threads, workers;
} model_t;

static model_t models[] = {
    {"workers", 0, 4}, {"io", 2, 0}, {"io+workers", 2, 4}};


/* An echo that sometimes takes a while, so requests are in flight on the
 * workers when their connection goes away. */
static void
h_slow_echo(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;

    (void)ud;
    if (in->payload.len > 0 && in->payload.data[0] % 4 == 0)
        usleep(500);
    rsp.payload = in->payload;
    zn_msg_reply(req, &rsp.base);
}


typedef struct {
    zn_msg_table_t *table;
    zn_msg_service_t *svc;
    zn_loop_t *loop;
    zn_server_t *srv;
    uint16_t port;
} sfx_t;


static void
sfx_start(sfx_t *fx, const model_t *m)
{
    zn_server_opts_t so;
    zn_msg_opts_t mo;

    zn_msg_opts_default(&mo);
    mo.workers = m->workers;
    assert_int_equal(zn_msg_table_new(&fx->table), 0);
    zn_msg_table_register(fx->table, 2, &demo__echo_req__descriptor,
                          h_slow_echo, NULL);
    assert_int_equal(zn_msg_service_new(fx->table, &mo, &fx->svc), 0);
    zn_server_opts_default(&so);
    so.host = "127.0.0.1";
    so.io_threads = m->io_threads;
    so.backlog = 1024;
    zn_msg_service_bind(fx->svc, &so);
    assert_int_equal(zn_loop_new(&fx->loop), 0);
    assert_int_equal(zn_server_new(fx->loop, &so, &fx->srv), 0);
    assert_int_equal(zn_server_start(fx->srv), 0);
    fx->port = zn_server_port(fx->srv);
}


static void
sfx_stop(sfx_t *fx)
{
    zn_msg_service_stop(fx->svc);
    zn_server_stop(fx->srv, 1000);
    zn_server_free(fx->srv);
    zn_msg_service_free(fx->svc);
    zn_msg_table_free(fx->table);
    zn_loop_free(fx->loop);
}


/* One request frame: cmd 2, an EchoReq of 16 bytes. */
static size_t
echo_frame(uint8_t *out, uint32_t seq)
{
    Demo__EchoReq req = DEMO__ECHO_REQ__INIT;
    uint8_t payload[16], *p;
    size_t n;

    memset(payload, (int)(seq & 0xff), sizeof(payload));
    req.payload.data = payload;
    req.payload.len = sizeof(payload);
    assert_int_equal(zn_msg_pack_frame(2, seq, 0, &req.base, &p, &n), 0);
    memcpy(out, p, n);
    zn_msg_frame_free(p);
    return n;
}


/*
 * One round: open CONNS connections, write 8 pipelined requests on each,
 * read a little, then close each at a random moment, a quarter of them
 * with a reset.
 */
static void
churn_round(uint16_t port, unsigned seed)
{
    int fds[CONNS], i, k;
    uint8_t frame[64], buf[4096];
    struct linger lg = {1, 0};
    uint64_t end = zn_now_ms() + ROUND_MS;
    size_t n;

    srand(seed);
    for (i = 0; i < CONNS; i++) {
        fds[i] = tu_connect(port);
        for (k = 0; k < 8; k++) {
            n = echo_frame(frame, (uint32_t)(i * 8 + k + 1));
            tu_write_all(fds[i], frame, n);
        }
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
    }
    while (zn_now_ms() < end) {
        i = rand() % CONNS;
        if (fds[i] < 0)
            continue;
        (void)!recv(fds[i], buf, sizeof(buf), 0);
        if (rand() % 3 == 0) {
            if (rand() % 4 == 0)
                setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(fds[i]);
            fds[i] = -1;
        }
        usleep(200);
    }
    for (i = 0; i < CONNS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}


typedef struct {
    sfx_t *fx;
    _Atomic int done;
} runner_t;


static void *
run_main_loop(void *arg)
{
    runner_t *r = arg;

    zn_loop_run(r->fx->loop);
    atomic_store(&r->done, 1);
    return NULL;
}


static int
quiet(void *ud)
{
    sfx_t *fx = ud;
    zn_server_stats_t st;

    zn_server_stats(fx->srv, &st);
    return st.conns_live == 0 && zn_msg_service_pending(fx->svc) == 0;
}


static void
test_churn_then_still_serving(void **state)
{
    const model_t *m = *state;
    runner_t r = {0};
    pthread_t th;
    sfx_t fx;
    uint8_t frame[64], hdr[16];
    size_t n;
    int fd, round;

    sfx_start(&fx, m);
    r.fx = &fx;
    pthread_create(&th, NULL, run_main_loop, &r);
    for (round = 0; round < ROUNDS; round++)
        churn_round(fx.port, (unsigned)round + 1);
    assert_true(tu_wait_until(quiet, &fx, 10000));
    fd = tu_connect(fx.port); /* still serving */
    n = echo_frame(frame, 4242);
    tu_write_all(fd, frame, n);
    assert_int_equal(tu_read_exact(fd, hdr, 16), 0);
    assert_int_equal(hdr[15] | hdr[14] << 8, 4242);
    close(fd);
    zn_loop_stop(fx.loop);
    pthread_join(th, NULL);
    sfx_stop(&fx);
}


#define LCONNS 20
#define LWINDOW 4

/* One connection of the loader: up to LWINDOW requests outstanding. */
typedef struct {
    int fd;
    uint32_t out[LWINDOW]; /* seqs sent and not answered; 0: free slot */
    unsigned nout;
    uint8_t in[4096];
    size_t inlen;
} lconn_t;

typedef struct {
    uint16_t port;
    _Atomic int stopping;      /* the server is being stopped: it may close */
    _Atomic int stop;          /* send no more; read each connection to EOF */
    _Atomic uint64_t answered; /* echoes with the right payload */
    _Atomic uint64_t refused;  /* SHUTTING_DOWN */
    uint64_t sent;
    unsigned ended;            /* connections the server closed at the end */
    char bad[160];             /* the first wrong thing seen */
    lconn_t c[LCONNS];
} loader_t;


static void
loader_bad(loader_t *l, const char *what, uint32_t seq)
{
    if (l->bad[0] == '\0')
        snprintf(l->bad, sizeof(l->bad), "%s (seq %u)", what, seq);
}


/* Checks one reply: it answers a request outstanding on this connection,
 * once, with the echo of that request's payload or SHUTTING_DOWN. */
static void
loader_reply(loader_t *l, lconn_t *c, const zn_frame_t *f)
{
    uint32_t seq = f->hdr.seq;
    Demo__EchoRsp *rsp;
    Znet__Error *e;
    unsigned i;

    for (i = 0; i < LWINDOW && c->out[i] != seq; i++)
        ;
    if (seq == 0 || i == LWINDOW) {
        loader_bad(l, "a reply to no request outstanding", seq);
        return;
    }
    c->out[i] = 0;
    c->nout--;
    if (!zn_frame_is_response(&f->hdr)) {
        loader_bad(l, "not a response", seq);
    } else if (f->hdr.flags & ZN_FRAME_F_ERROR) {
        e = znet__error__unpack(NULL, f->hdr.length, f->body);
        if (e == NULL || e->code != ZN_CODE_SHUTTING_DOWN)
            loader_bad(l, "an error other than SHUTTING_DOWN", seq);
        else
            atomic_fetch_add(&l->refused, 1);
        znet__error__free_unpacked(e, NULL);
    } else {
        rsp = demo__echo_rsp__unpack(NULL, f->hdr.length, f->body);
        if (rsp == NULL || rsp->payload.len != 16 ||
            rsp->payload.data[0] != (uint8_t)seq ||
            rsp->payload.data[15] != (uint8_t)seq)
            loader_bad(l, "an echo of the wrong payload", seq);
        else
            atomic_fetch_add(&l->answered, 1);
        demo__echo_rsp__free_unpacked(rsp, NULL);
    }
}


/* Reads what is there; returns 0 at EOF or on an error, else 1. */
static int
loader_read(loader_t *l, lconn_t *c)
{
    zn_frame_reason_t why;
    zn_frame_t f;
    size_t off = 0;
    ssize_t k;
    int rc;

    k = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
    if (k == 0 || (k < 0 && errno != EAGAIN))
        return 0;
    if (k < 0)
        return 1;
    c->inlen += (size_t)k;
    while ((rc = zn_frame_next(c->in + off, c->inlen - off, 1024, &f,
                               &why)) == 0) {
        loader_reply(l, c, &f);
        off += f.size;
    }
    if (rc != ZN_EAGAIN)
        loader_bad(l, "a bad frame", 0);
    memmove(c->in, c->in + off, c->inlen - off);
    c->inlen -= off;
    return 1;
}


static int
loader_connect(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    a.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(fd, (void *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}


/*
 * Keeps LCONNS connections busy with pipelined requests (LWINDOW each)
 * and checks every reply, until told to stop; then sends nothing more
 * and reads each connection until the server closes it (for at most
 * 20 s).
 */
static void *
loader_main(void *arg)
{
    loader_t *l = arg;
    uint8_t frame[64];
    uint32_t next = 1;
    uint64_t end;
    unsigned i, k;
    size_t n;

    for (i = 0; i < LCONNS; i++) {
        memset(&l->c[i], 0, sizeof(l->c[i]));
        if ((l->c[i].fd = loader_connect(l->port)) < 0)
            loader_bad(l, "connect failed", 0);
    }
    while (!atomic_load(&l->stop)) {
        for (i = 0; i < LCONNS; i++) {
            lconn_t *c = &l->c[i];

            if (c->fd < 0)
                continue;
            while (c->nout < LWINDOW && !atomic_load(&l->stop)) {
                n = echo_frame(frame, next);
                if (send(c->fd, frame, n, MSG_NOSIGNAL) != (ssize_t)n)
                    break; /* full for now (or closed: read says so) */
                for (k = 0; c->out[k] != 0; k++)
                    ;
                c->out[k] = next++;
                c->nout++;
                l->sent++;
            }
            if (!loader_read(l, c)) {
                if (!atomic_load(&l->stopping))
                    loader_bad(l, "closed before the server stopped", 0);
                close(c->fd);
                c->fd = -1;
                l->ended++;
            }
        }
        usleep(100);
    }
    end = zn_now_ms() + 20000;
    for (i = 0; i < LCONNS; i++) {
        lconn_t *c = &l->c[i];

        while (c->fd >= 0 && zn_now_ms() < end) {
            struct pollfd p = {c->fd, POLLIN, 0};

            (void)poll(&p, 1, 10);
            if (!loader_read(l, c)) {
                close(c->fd);
                c->fd = -1;
                l->ended++;
            }
        }
        if (c->fd >= 0)
            close(c->fd);
    }
    return NULL;
}


static int
loader_busy(void *ud)
{
    return atomic_load(&((loader_t *)ud)->answered) >= 500;
}


/*
 * Another thread stops the main loop while 20 clients hammer the server,
 * and the server is stopped while they still send. Every reply a client
 * got answers its own request with the right payload (or SHUTTING_DOWN),
 * every request the server read was answered and its answer arrived, and
 * the server closed every connection; no hang (the test's time-out), no
 * leak.
 */
static void
test_stop_under_load_from_another_thread(void **state)
{
    const model_t *m = *state;
    runner_t r = {0};
    static loader_t l;
    zn_msg_stats_t ms;
    pthread_t th, lt;
    sfx_t fx;

    sfx_start(&fx, m);
    r.fx = &fx;
    memset(&l, 0, sizeof(l));
    l.port = fx.port;
    pthread_create(&th, NULL, run_main_loop, &r);
    pthread_create(&lt, NULL, loader_main, &l);
    assert_true(tu_wait_until(loader_busy, &l, 20000));
    zn_loop_stop(fx.loop); /* from this thread, under load */
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&r.done), 1);
    atomic_store(&l.stopping, 1);
    zn_msg_service_stop(fx.svc); /* while the loader still sends */
    zn_server_stop(fx.srv, 5000);
    atomic_store(&l.stop, 1);
    pthread_join(lt, NULL);
    zn_msg_service_stats(fx.svc, &ms);
    print_message("[%s] %llu sent, %llu answered, %llu SHUTTING_DOWN; "
                  "server read %llu, replied %llu, late %llu\n", m->name,
                  (unsigned long long)l.sent, (unsigned long long)l.answered,
                  (unsigned long long)l.refused,
                  (unsigned long long)ms.requests,
                  (unsigned long long)ms.replies,
                  (unsigned long long)ms.late_replies);
    if (l.bad[0] != '\0')
        fail_msg("%s", l.bad);
    assert_int_equal(l.ended, LCONNS);
    assert_int_equal(ms.requests, l.answered + l.refused);
    assert_int_equal(ms.replies, ms.requests);
    assert_true(ms.requests <= l.sent);
    assert_int_equal(ms.late_replies, 0);
    zn_server_free(fx.srv);
    zn_msg_service_free(fx.svc);
    zn_msg_table_free(fx.table);
    zn_loop_free(fx.loop);
}


#define PER_MODEL(fn)                                                         \
    cmocka_unit_test_prestate(fn, &models[0]),                               \
        cmocka_unit_test_prestate(fn, &models[1]),                           \
        cmocka_unit_test_prestate(fn, &models[2])

int
main(void)
{
    const struct CMUnitTest tests[] = {
        PER_MODEL(test_churn_then_still_serving),
        PER_MODEL(test_stop_under_load_from_another_thread),
    };

    tu_alarm(240);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
