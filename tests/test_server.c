/*
 * test_server.c: the server under load and under pressure, in the single
 * and multi-loop models: many concurrent echo clients, connection limits,
 * running out of descriptors, slow readers, address families, lookup by id.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static void
echo_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    (void)ud;
    if (zn_conn_send(c, zn_buf_peek(in), zn_buf_len(in)) == 0)
        zn_buf_consume(in, zn_buf_len(in));
}


static void
echo_opts(zn_server_opts_t *o)
{
    zn_server_opts_default(o);
    o->handler.on_data = echo_on_data;
}


/* One echo round trip of `n` bytes on a blocking socket. */
static void
echo_roundtrip(int fd, size_t n)
{
    char out[4096], in[4096];

    assert_true(n <= sizeof(out));
    tu_pattern(out, n, 99, 0);
    tu_write_all(fd, out, n);
    assert_int_equal(tu_read_exact(fd, in, n), 0);
    assert_memory_equal(in, out, n);
}

/* ---- many concurrent clients ----------------------------------------- */

typedef struct {
    int fd;
    size_t sent, got;
} mc_t;


/*
 * Drives `n` non-blocking clients from one epoll: each writes `size`
 * bytes of its own pattern and reads them back, verifying every byte.
 */
static void
many_clients_echo(uint16_t port, int n, size_t size)
{
    mc_t *m = calloc((size_t)n, sizeof(*m));
    static char buf[65536];
    struct epoll_event ev, evs[256];
    int ep = epoll_create1(0), i, k, done = 0, ne;
    uint64_t deadline = zn_now_ms() + 60000;
    ssize_t r;

    for (i = 0; i < n; i++) {
        m[i].fd = tu_connect(port);
        fcntl(m[i].fd, F_SETFL, O_NONBLOCK);
        ev.events = EPOLLIN | EPOLLOUT;
        ev.data.u32 = (uint32_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, m[i].fd, &ev);
    }
    while (done < n) {
        assert_true(zn_now_ms() < deadline);
        ne = epoll_wait(ep, evs, 256, 1000);
        for (k = 0; k < ne; k++) {
            mc_t *c = &m[evs[k].data.u32];
            if ((evs[k].events & EPOLLOUT) && c->sent < size) {
                size_t len = size - c->sent < sizeof(buf) ? size - c->sent
                                                          : sizeof(buf);
                tu_pattern(buf, len, evs[k].data.u32, c->sent);
                r = send(c->fd, buf, len, MSG_NOSIGNAL);
                if (r > 0)
                    c->sent += (size_t)r;
                if (c->sent == size) {
                    ev.events = EPOLLIN;
                    ev.data.u32 = evs[k].data.u32;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (evs[k].events & EPOLLIN) {
                r = recv(c->fd, buf, sizeof(buf), 0);
                assert_true(r > 0);
                assert_true(tu_pattern_check(buf, (size_t)r,
                                             evs[k].data.u32, c->got));
                c->got += (size_t)r;
                assert_true(c->got <= size);
                if (c->got == size) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    done++;
                }
            }
        }
    }
    for (i = 0; i < n; i++)
        close(m[i].fd);
    close(ep);
    free(m);
}


static int
all_closed(void *ud)
{
    tu_server_t *ts = ud;

    return tu_server_stats(ts).conns_live == 0;
}


/* ThreadSanitizer makes every memory access several times slower: the
 * same 500 clients move 128 KiB each there (1 MiB in the other builds),
 * which still crosses every code path and thread hand-off. */
#if defined(__SANITIZE_THREAD__)
#define ECHO_BYTES (128u << 10)
#else
#define ECHO_BYTES (1u << 20)
#endif


static void
run_500_clients(unsigned io_threads)
{
    zn_server_opts_t o;
    zn_server_stats_t st;
    tu_server_t ts;

    echo_opts(&o);
    o.io_threads = io_threads;
    o.backlog = 1024;
    tu_server_start(&ts, &o);
    many_clients_echo(ts.port, 500, ECHO_BYTES);
    assert_true(tu_wait_until(all_closed, &ts, 10000));
    st = tu_server_stats(&ts);
    assert_int_equal(st.conns_accepted, 500);
    assert_int_equal(st.bytes_in, 500ull * ECHO_BYTES);
    assert_int_equal(st.bytes_out, 500ull * ECHO_BYTES);
    assert_int_equal(st.closes[ZN_CLOSE_PEER], 500);
    tu_server_stop(&ts);
}


static void
test_500_clients_echo_1mib_single_loop(void **state)
{
    (void)state;
    run_500_clients(0);
}


static void
test_500_clients_echo_1mib_two_io_loops(void **state)
{
    (void)state;
    run_500_clients(2);
}

/* ---- limits ---------------------------------------------------------- */


static void
test_max_conns_refuses_extra_and_counts(void **state)
{
    static const char reject[] = "busy";
    zn_server_opts_t o;
    tu_server_t ts;
    int fd[5], i, err;
    char buf[8];

    (void)state;
    echo_opts(&o);
    o.max_conns = 3;
    o.reject_data = reject;
    o.reject_len = 4;
    tu_server_start(&ts, &o);
    for (i = 0; i < 3; i++) {
        fd[i] = tu_connect(ts.port);
        echo_roundtrip(fd[i], 100);
    }
    for (i = 3; i < 5; i++) {
        fd[i] = tu_connect(ts.port);
        assert_int_equal(tu_read_exact(fd[i], buf, 4), 0);
        assert_memory_equal(buf, "busy", 4);
        assert_int_equal(tu_read_to_eof(fd[i], 1, &err), 0);
        close(fd[i]);
    }
    assert_int_equal(tu_server_stats(&ts).conns_rejected, 2);
    assert_int_equal(tu_server_stats(&ts).closes[ZN_CLOSE_MAX_CONNS], 2);
    close(fd[0]);
    usleep(50000);
    fd[0] = tu_connect(ts.port); /* room again */
    echo_roundtrip(fd[0], 10);
    for (i = 0; i < 3; i++)
        close(fd[i]);
    tu_server_stop(&ts);
}


/* Echoes whole lines; a partial line stays in the input buffer. */
static void
line_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    ssize_t nl = zn_buf_find(in, "\n", 1);

    (void)ud;
    if (nl >= 0 && zn_conn_send(c, zn_buf_peek(in), (size_t)nl + 1) == 0)
        zn_buf_consume(in, (size_t)nl + 1);
}


static uint64_t
in_held(tu_server_t *ts)
{
    return tu_server_stats(ts).in_held;
}


/* Waits until the server holds `want` bytes of unread input. */
static void
wait_in_held(tu_server_t *ts, uint64_t want)
{
    uint64_t deadline = zn_now_ms() + 5000;

    while (in_held(ts) != want && zn_now_ms() < deadline)
        usleep(1000);
    assert_int_equal(in_held(ts), want);
}


/* Waits until `n` connections were closed over the input budget. */
static void
wait_budget_closes(tu_server_t *ts, uint64_t n)
{
    uint64_t deadline = zn_now_ms() + 5000;

    while (tu_server_stats(ts).closes[ZN_CLOSE_INPUT_BUDGET] != n &&
           zn_now_ms() < deadline)
        usleep(1000);
    assert_int_equal(tu_server_stats(ts).closes[ZN_CLOSE_INPUT_BUDGET], n);
}


/*
 * Many peers each holding a partial message below its own bound must not
 * add up past the server's budget: the read that would take the total
 * over it closes that peer (counted), the others keep their input, and
 * the budget is given back as input is consumed or connections close.
 * Each partial line is 1,000 bytes, read at once: its storage is exactly
 * 1,000 bytes.
 */
static void
budget_run(unsigned io_threads)
{
    enum { PART = 1000 };
    zn_server_opts_t o;
    tu_server_t ts;
    char part[PART], buf[PART + 1];
    int a, b, c, d, err;

    memset(part, 'x', sizeof(part));
    zn_server_opts_default(&o);
    o.handler.on_data = line_on_data;
    o.io_threads = io_threads;
    o.in_budget = 2500;
    tu_server_start(&ts, &o);
    a = tu_connect(ts.port);
    b = tu_connect(ts.port);
    tu_write_all(a, part, PART);
    wait_in_held(&ts, PART);
    tu_write_all(b, part, PART);
    wait_in_held(&ts, 2 * PART);
    c = tu_connect(ts.port); /* would make 3,000: closed */
    tu_write_all(c, part, PART);
    assert_true(tu_read_to_eof(c, 1, &err) <= 0);
    wait_in_held(&ts, 2 * PART);
    wait_budget_closes(&ts, 1);
    tu_write_all(a, "\n", 1); /* a's line completes: its storage goes */
    assert_int_equal(tu_read_exact(a, buf, PART + 1), 0);
    assert_memory_equal(buf, part, PART);
    wait_in_held(&ts, PART);
    d = tu_connect(ts.port); /* room again */
    tu_write_all(d, part, PART);
    wait_in_held(&ts, 2 * PART);
    tu_write_all(d, "\n", 1);
    assert_int_equal(tu_read_exact(d, buf, PART + 1), 0);
    close(b); /* closing gives the rest back */
    wait_in_held(&ts, 0);
    wait_budget_closes(&ts, 1);
    close(a);
    close(c);
    close(d);
    tu_server_stop(&ts);
}


static void
test_input_budget_closes_the_peer_that_passes_it(void **state)
{
    (void)state;
    budget_run(0);
    budget_run(2); /* connections of two loops share one budget */
}


/*
 * The server runs in a child process whose descriptor limit is lowered,
 * so that accept() fails with EMFILE while the parent's clients connect.
 * The child reports its counters through a pipe when it is told to stop.
 */
typedef struct {
    uint16_t port;
    uint64_t emfile, accepted, iterations;
} emfile_report_t;


static void
emfile_child_signal(zn_loop_t *loop, int signum, void *ud)
{
    (void)signum;
    (void)ud;
    zn_loop_stop(loop);
}


static void
emfile_child(int wfd)
{
    zn_server_opts_t o;
    zn_server_stats_t st;
    zn_loop_stats_t ls;
    zn_server_t *srv;
    zn_loop_t *loop;
    emfile_report_t rep = {0};
    struct rlimit rl;

    echo_opts(&o);
    o.host = "127.0.0.1";
    o.emfile_backoff_ms = 50;
    if (zn_loop_new(&loop) != 0 ||
        zn_loop_handle_signals(loop, NULL, emfile_child_signal, NULL) != 0 ||
        zn_server_new(loop, &o, &srv) != 0 || zn_server_start(srv) != 0)
        _exit(3);
    rep.port = zn_server_port(srv);
    rl.rlim_cur = rl.rlim_max = (rlim_t)tu_count_fds() + 6;
    setrlimit(RLIMIT_NOFILE, &rl);
    (void)!write(wfd, &rep, sizeof(rep));
    zn_loop_run(loop);
    zn_server_stats(srv, &st);
    zn_loop_stats(loop, &ls);
    rep.emfile = st.emfile_events;
    rep.accepted = st.conns_accepted;
    rep.iterations = ls.iterations;
    zn_server_free(srv);
    zn_loop_free(loop);
    (void)!write(wfd, &rep, sizeof(rep));
    _exit(0);
}


static void
test_emfile_pauses_without_spinning_and_recovers(void **state)
{
    enum { N = 40 };
    emfile_report_t rep;
    int p[2], fd[N], i, status;
    pid_t pid;

    (void)state;
    assert_int_equal(pipe(p), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        emfile_child(p[1]);
    }
    close(p[1]);
    assert_int_equal(read(p[0], &rep, sizeof(rep)), sizeof(rep));
    for (i = 0; i < N; i++)
        fd[i] = tu_connect(rep.port); /* the kernel completes them */
    sleep(1);
    for (i = 0; i < N; i++)
        close(fd[i]);
    sleep(2); /* back-off is at most a second; descriptors are back */
    fd[0] = tu_connect(rep.port);
    echo_roundtrip(fd[0], 64); /* recovered by itself */
    close(fd[0]);
    kill(pid, SIGTERM);
    assert_int_equal(read(p[0], &rep, sizeof(rep)), sizeof(rep));
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(p[0]);
    fprintf(stderr, "emfile: %llu events, %llu accepted, %llu iterations\n",
            (unsigned long long)rep.emfile, (unsigned long long)rep.accepted,
            (unsigned long long)rep.iterations);
    assert_true(rep.emfile > 0);
    assert_true(rep.accepted >= 1);
    /* Three seconds of pressure: a spinning accept loop would iterate
     * hundreds of thousands of times. */
    assert_true(rep.iterations < 2000);
}

/* ---- slow readers ---------------------------------------------------- */

typedef struct {
    int fd;
    _Atomic int stop;
    _Atomic long got;
} drainer_t;


static void *
drainer_main(void *arg)
{
    drainer_t *d = arg;
    char buf[65536];
    ssize_t r;

    while (!atomic_load(&d->stop)) {
        r = recv(d->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r > 0)
            atomic_fetch_add(&d->got, r);
        else
            usleep(500);
    }
    return NULL;
}


/* Sends until the peer has stopped reading for 300 ms; false if `max`
 * bytes went out first. */
static bool
flood_until_blocked(int fd, const char *buf, size_t len, size_t max)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    size_t total = 0;
    ssize_t r;

    while (total < max) {
        r = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r > 0) {
            total += (size_t)r;
            continue;
        }
        assert_true(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        if (poll(&p, 1, 300) == 0)
            return true;
    }
    return false;
}


static void
push_all(zn_conn_t *c, void *arg)
{
    (void)zn_conn_send(c, arg, 65536);
}


static void
test_slow_reader_pauses_then_hits_hard_cap_others_served(void **state)
{
    static char chunk[65536];
    zn_server_opts_t o;
    zn_server_stats_t st;
    tu_server_t ts;
    drainer_t d = {0};
    pthread_t th;
    char *junk = calloc(1, 1 << 20);
    int slow, i;

    (void)state;
    echo_opts(&o);
    o.limits.out_high = 512 << 10;
    o.limits.out_low = 128 << 10;
    o.limits.out_hard = 4 << 20;
    tu_server_start(&ts, &o);
    slow = tu_connect(ts.port);
    d.fd = tu_connect(ts.port);
    /* The slow peer sends but never reads: its echoes pile up until the
     * server stops reading from it, and then our sends block. */
    assert_true(flood_until_blocked(slow, junk, 1 << 20, 256 << 20));
    st = tu_server_stats(&ts);
    assert_true(st.high_water_events >= 1);
    assert_int_equal(st.conns_live, 2);
    echo_roundtrip(d.fd, 1000); /* the other client is served */
    /* Pushes to everyone: the slow peer passes the hard bound. */
    pthread_create(&th, NULL, drainer_main, &d);
    for (i = 0; i < 200 && tu_server_stats(&ts).conns_live == 2; i++) {
        zn_server_foreach(ts.srv, push_all, chunk);
        usleep(2000);
    }
    atomic_store(&d.stop, 1);
    pthread_join(th, NULL);
    st = tu_server_stats(&ts);
    assert_int_equal(st.closes[ZN_CLOSE_OUTPUT_CAP], 1);
    assert_int_equal(st.conns_live, 1);
    assert_true(atomic_load(&d.got) > 0);
    close(slow);
    close(d.fd);
    free(junk);
    tu_server_stop(&ts);
}

/* ---- addresses, lookup, models --------------------------------------- */


static void
test_ipv6_listener_echoes(void **state)
{
    zn_server_opts_t o;
    tu_server_t ts;
    int fd;

    (void)state;
    echo_opts(&o);
    o.host = "::1";
    tu_server_start(&ts, &o);
    fd = tu_connect_addr("::1", ts.port);
    echo_roundtrip(fd, 500);
    close(fd);
    tu_server_stop(&ts);
}


static void
test_unix_listener_echoes(void **state)
{
    zn_server_opts_t o;
    tu_server_t ts;
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    char path[64], host[80];
    int fd;

    (void)state;
    snprintf(path, sizeof(path), "/tmp/znet-test-%d.sock", (int)getpid());
    snprintf(host, sizeof(host), "unix:%s", path);
    echo_opts(&o);
    o.host = host;
    tu_server_start(&ts, &o);
    assert_int_equal(ts.port, 0);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    strcpy(un.sun_path, path);
    assert_int_equal(connect(fd, (struct sockaddr *)&un, sizeof(un)), 0);
    echo_roundtrip(fd, 700);
    close(fd);
    tu_server_stop(&ts);
    unlink(path);
}


typedef struct {
    _Atomic uint64_t ids[8];
    _Atomic int fds[8]; /* the server side's descriptor numbers */
    _Atomic int on1[8]; /* on the second IO loop */
    _Atomic int n;
    _Atomic int per_loop[2];
    zn_server_t *srv;
} id_fx_t;


static void
id_on_connect(zn_conn_t *c, void *ud)
{
    id_fx_t *fx = ud;
    int i = atomic_fetch_add(&fx->n, 1);

    if (i < 8) {
        atomic_store(&fx->fds[i], zn_conn_fd(c));
        atomic_store(&fx->ids[i], zn_conn_id(c));
    }
    if (fx->srv != NULL && zn_server_loop_count(fx->srv) == 2) {
        int one = zn_conn_loop(c) == zn_server_loop(fx->srv, 1);

        if (i < 8)
            atomic_store(&fx->on1[i], one);
        atomic_fetch_add(&fx->per_loop[one], 1);
    }
}


static int
id_n3(void *ud)
{
    return atomic_load(&((id_fx_t *)ud)->n) >= 3;
}


static int
id_n4(void *ud)
{
    return atomic_load(&((id_fx_t *)ud)->n) >= 4;
}


typedef struct {
    tu_server_t *ts;
    uint64_t id;
} gone_t;


/* The server no longer finds the connection: it is closed, its
 * descriptor closed before it left the table. */
static int
id_gone(void *ud)
{
    gone_t *g = ud;
    zn_conn_t *c = zn_server_find(g->ts->srv, g->id);

    if (c == NULL)
        return 1;
    zn_conn_unref(c);
    return 0;
}


/*
 * Connections are found by id from another thread while open and not once
 * closed, and a new connection that gets the closed one's descriptor
 * number gets a new id (ids never come back, descriptors do).
 */
static void
test_find_by_id_and_ids_never_reused(void **state)
{
    id_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    zn_conn_t *c;
    gone_t gone;
    uint64_t first;
    int fd[3], i;

    (void)state;
    echo_opts(&o);
    o.handler.on_connect = id_on_connect;
    o.handler.ud = &fx;
    tu_server_start(&ts, &o);
    for (i = 0; i < 3; i++)
        fd[i] = tu_connect(ts.port);
    assert_true(tu_wait_until(id_n3, &fx, 5000));
    for (i = 0; i < 3; i++) {
        c = zn_server_find(ts.srv, atomic_load(&fx.ids[i]));
        assert_non_null(c);
        assert_int_equal(zn_conn_id(c), atomic_load(&fx.ids[i]));
        assert_int_equal(zn_conn_send(c, "hi", 2), 0);
        zn_conn_unref(c);
    }
    first = atomic_load(&fx.ids[0]);
    close(fd[0]);
    gone.ts = &ts;
    gone.id = first;
    assert_true(tu_wait_until(id_gone, &gone, 5000));
    assert_int_equal(tu_server_stats(&ts).conns_live, 2);
    assert_null(zn_server_find(ts.srv, 0));
    fd[0] = tu_connect(ts.port);
    assert_true(tu_wait_until(id_n4, &fx, 5000));
    /* accept() gives the lowest free number: the one just closed */
    assert_int_equal(atomic_load(&fx.fds[3]), atomic_load(&fx.fds[0]));
    assert_true(atomic_load(&fx.ids[3]) > atomic_load(&fx.ids[2]));
    assert_null(zn_server_find(ts.srv, first));
    c = zn_server_find(ts.srv, atomic_load(&fx.ids[3]));
    assert_non_null(c);
    assert_int_equal(zn_conn_fd(c), atomic_load(&fx.fds[0]));
    zn_conn_unref(c);
    for (i = 0; i < 3; i++)
        close(fd[i]);
    tu_server_stop(&ts);
}


/* Two IO loops without reuseport: the acceptor deals connections out in
 * turn, exactly half each. */
static void
test_two_io_loops_share_connections_round_robin(void **state)
{
    id_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    int fd[20], i;

    (void)state;
    echo_opts(&o);
    o.io_threads = 2;
    o.handler.on_connect = id_on_connect;
    o.handler.ud = &fx;
    tu_server_start(&ts, &o);
    fx.srv = ts.srv; /* read only after start: the loops exist */
    for (i = 0; i < 20; i++) {
        fd[i] = tu_connect(ts.port);
        echo_roundtrip(fd[i], 128);
    }
    assert_int_equal(atomic_load(&fx.per_loop[0]), 10);
    assert_int_equal(atomic_load(&fx.per_loop[1]), 10);
    for (i = 0; i < 20; i++)
        close(fd[i]);
    assert_true(tu_wait_until(all_closed, &ts, 5000));
    tu_server_stop(&ts);
}


/* The TCP sockets listening on 127.0.0.1:port, from /proc/net/tcp (state
 * 0A); *queued gets the sum of their accept queues (the rx_queue column
 * of a listening socket: connections the kernel completed that nobody
 * accepted yet). */
static int
listeners_on(uint16_t port, unsigned *queued)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    char line[512];
    unsigned lport, st, tx, rx;
    int n = 0;

    assert_non_null(f);
    *queued = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, " %*u: %*x:%x %*x:%*x %x %x:%x", &lport, &st, &tx,
                   &rx) != 4 ||
            lport != port || st != 0x0A)
            continue;
        n++;
        *queued += rx;
    }
    fclose(f);
    return n;
}


typedef struct {
    id_fx_t *fx;
    uint16_t port;
    int want;
    unsigned queued;
} spread_t;


/* Every connection is either accepted by loop 0 or waits in a listener's
 * accept queue. */
static int
all_placed(void *ud)
{
    spread_t *sp = ud;

    (void)listeners_on(sp->port, &sp->queued);
    return atomic_load(&sp->fx->per_loop[0]) + (int)sp->queued == sp->want &&
           atomic_load(&sp->fx->n) == atomic_load(&sp->fx->per_loop[0]);
}


/*
 * With reuseport each IO loop has a listening socket of its own and the
 * kernel spreads connections over them: two sockets listen on the port,
 * and with the second loop held, the connections the kernel gave its
 * socket wait in that socket's queue while the first loop accepts the
 * rest; released, the second loop accepts exactly those.
 */
static void
test_reuseport_listener_per_io_loop(void **state)
{
    id_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    spread_t sp;
    unsigned queued;
    int fd[20], i;

    (void)state;
    echo_opts(&o);
    o.io_threads = 2;
    o.reuseport = true;
    o.backlog = 64;
    o.handler.on_connect = id_on_connect;
    o.handler.ud = &fx;
    tu_server_start(&ts, &o);
    fx.srv = ts.srv;
    assert_int_equal(listeners_on(ts.port, &queued), 2);
    assert_int_equal(queued, 0);
    tu_hold_and_fill(zn_server_loop(ts.srv, 1), 0, NULL);
    for (i = 0; i < 20; i++)
        fd[i] = tu_connect(ts.port);
    sp = (spread_t){&fx, ts.port, 20, 0};
    assert_true(tu_wait_until(all_placed, &sp, 5000));
    queued = sp.queued;
    print_message("reuseport: loop 0 accepted %d, %u queued for loop 1\n",
                  atomic_load(&fx.per_loop[0]), queued);
    /* 20 connections hashed over 2 sockets: all on one has odds 2^-19 */
    assert_true(queued > 0 && queued < 20);
    assert_int_equal(atomic_load(&fx.per_loop[1]), 0);
    tu_release();
    for (i = 0; i < 20; i++)
        echo_roundtrip(fd[i], 128);
    assert_int_equal(atomic_load(&fx.per_loop[1]), (int)queued);
    assert_int_equal(atomic_load(&fx.per_loop[0]), 20 - (int)queued);
    for (i = 0; i < 20; i++)
        close(fd[i]);
    assert_true(tu_wait_until(all_closed, &ts, 5000));
    tu_server_stop(&ts);
}


static int
id_reached(id_fx_t *fx, int n)
{
    int i;

    for (i = 0; i < 500 && atomic_load(&fx->n) < n; i++)
        usleep(10000);
    return atomic_load(&fx->n) >= n;
}


static void
noop(void *arg)
{
    (void)arg;
}


/*
 * ZN_BALANCE_LEAST_CONNS gives a new connection to the loop with the
 * fewest: after the two connections of loop 1 close, the next two both go
 * to loop 1 (round robin would split them).
 */
static void
test_least_conns_fills_the_emptier_loop(void **state)
{
    id_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    gone_t gone;
    int fd[6], i, closed = 0;

    (void)state;
    echo_opts(&o);
    o.io_threads = 2;
    o.balance = ZN_BALANCE_LEAST_CONNS;
    o.handler.on_connect = id_on_connect;
    o.handler.ud = &fx;
    tu_server_start(&ts, &o);
    fx.srv = ts.srv;
    for (i = 0; i < 4; i++) { /* one at a time: each counted before next */
        fd[i] = tu_connect(ts.port);
        assert_true(id_reached(&fx, i + 1));
    }
    assert_int_equal(atomic_load(&fx.per_loop[0]), 2);
    assert_int_equal(atomic_load(&fx.per_loop[1]), 2);
    gone.ts = &ts;
    for (i = 0; i < 4; i++) {
        if (!atomic_load(&fx.on1[i]))
            continue;
        close(fd[i]);
        fd[i] = -1;
        gone.id = atomic_load(&fx.ids[i]);
        assert_true(tu_wait_until(id_gone, &gone, 5000));
        closed++;
    }
    assert_int_equal(closed, 2);
    /* the count drops on loop 1 just after the table forgets the id */
    tu_run_on(zn_server_loop(ts.srv, 1), noop, NULL);
    for (i = 4; i < 6; i++) {
        fd[i] = tu_connect(ts.port);
        assert_true(id_reached(&fx, i + 1));
        assert_int_equal(atomic_load(&fx.on1[i]), 1);
    }
    for (i = 0; i < 6; i++) {
        if (fd[i] >= 0) {
            echo_roundtrip(fd[i], 64);
            close(fd[i]);
        }
    }
    assert_true(tu_wait_until(all_closed, &ts, 5000));
    tu_server_stop(&ts);
}


static void
test_stop_closes_open_connections(void **state)
{
    zn_server_opts_t o;
    tu_server_t ts;
    int fd[4], i, err;

    (void)state;
    echo_opts(&o);
    o.io_threads = 2;
    tu_server_start(&ts, &o);
    for (i = 0; i < 4; i++) {
        fd[i] = tu_connect(ts.port);
        echo_roundtrip(fd[i], 10);
    }
    tu_server_stop(&ts);
    for (i = 0; i < 4; i++) {
        assert_int_equal(tu_read_to_eof(fd[i], 1, &err), 0);
        close(fd[i]);
    }
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_500_clients_echo_1mib_single_loop),
        cmocka_unit_test(test_500_clients_echo_1mib_two_io_loops),
        cmocka_unit_test(test_max_conns_refuses_extra_and_counts),
        cmocka_unit_test(test_input_budget_closes_the_peer_that_passes_it),
        cmocka_unit_test(test_emfile_pauses_without_spinning_and_recovers),
        cmocka_unit_test(
            test_slow_reader_pauses_then_hits_hard_cap_others_served),
        cmocka_unit_test(test_ipv6_listener_echoes),
        cmocka_unit_test(test_unix_listener_echoes),
        cmocka_unit_test(test_find_by_id_and_ids_never_reused),
        cmocka_unit_test(test_two_io_loops_share_connections_round_robin),
        cmocka_unit_test(test_reuseport_listener_per_io_loop),
        cmocka_unit_test(test_least_conns_fills_the_emptier_loop),
        cmocka_unit_test(test_stop_closes_open_connections),
    };

    tu_alarm(300);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
