/*
 * test_stress.c: the threading models under churn. Many connections
 * pipeline requests to slow handlers on workers and are closed at random
 * mid-flight (some with a reset), round after round; afterwards nothing is
 * in flight, no connection is left, and the server still serves. Then a
 * server under load is stopped from another thread. Bounded in time; run
 * under ASan (leaks) and TSan (races) by scripts/test.sh.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "testutil.h"
#include "znet/msg.h"

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


typedef struct {
    uint16_t port;
    _Atomic int stop;
} loader_t;


/* Keeps 20 connections busy with pipelined requests until told to stop,
 * reconnecting whenever the server closes one. */
static void *
loader_main(void *arg)
{
    loader_t *l = arg;
    int fds[20], i;
    uint8_t frame[64], buf[4096];
    size_t n = echo_frame(frame, 1);

    for (i = 0; i < 20; i++)
        fds[i] = -1;
    while (!atomic_load(&l->stop)) {
        for (i = 0; i < 20; i++) {
            if (fds[i] < 0) {
                fds[i] = socket(AF_INET, SOCK_STREAM, 0);
                struct sockaddr_in a = {.sin_family = AF_INET,
                                        .sin_port = htons(l->port)};
                a.sin_addr.s_addr = htonl(0x7f000001);
                if (connect(fds[i], (void *)&a, sizeof(a)) != 0) {
                    close(fds[i]);
                    fds[i] = -1;
                    continue;
                }
                fcntl(fds[i], F_SETFL, O_NONBLOCK);
            }
            if (send(fds[i], frame, n, MSG_NOSIGNAL) <= 0 ||
                recv(fds[i], buf, sizeof(buf), 0) == 0) {
                close(fds[i]);
                fds[i] = -1;
            }
        }
        usleep(100);
    }
    for (i = 0; i < 20; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return NULL;
}


/* Another thread stops the main loop while clients hammer the server;
 * then the server is stopped: no hang (the test's time-out), no leak. */
static void
test_stop_under_load_from_another_thread(void **state)
{
    const model_t *m = *state;
    runner_t r = {0};
    loader_t l = {0};
    pthread_t th, lt;
    sfx_t fx;

    sfx_start(&fx, m);
    r.fx = &fx;
    l.port = fx.port;
    pthread_create(&th, NULL, run_main_loop, &r);
    pthread_create(&lt, NULL, loader_main, &l);
    usleep(400000);
    zn_loop_stop(fx.loop); /* from this thread, under load */
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&r.done), 1);
    sfx_stop(&fx); /* while the loader still sends */
    atomic_store(&l.stop, 1);
    pthread_join(lt, NULL);
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
