/*
 * testutil.c: helpers for znet's tests.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"


static void
tu_on_alarm(int sig)
{
    static const char msg[] = "test time-out: alarm fired\n";

    (void)sig;
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(124);
}


void
tu_alarm(unsigned seconds)
{
    signal(SIGALRM, tu_on_alarm);
    alarm(seconds);
}


static void *
tu_loop_main(void *arg)
{
    tu_loop_thread_t *lt = arg;

    assert_int_equal(zn_loop_run(lt->loop), 0);
    return NULL;
}


void
tu_loop_thread_start(tu_loop_thread_t *lt, zn_loop_t *loop)
{
    sigset_t all, old;

    lt->loop = loop;
    sigfillset(&all); /* the test's loop threads never take signals */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    assert_int_equal(pthread_create(&lt->thread, NULL, tu_loop_main, lt), 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* Until the loop runs there, this thread counts as the loop's
     * (zn_loop_in_thread): wait, so that a call from here takes the
     * cross-thread path (loop.h). Posting nothing: tests count tasks and
     * refuse allocations. */
    while (zn_loop_in_thread(loop))
        usleep(100);
}


void
tu_loop_thread_join(tu_loop_thread_t *lt)
{
    zn_loop_stop(lt->loop);
    pthread_join(lt->thread, NULL);
}


typedef struct {
    void (*fn)(void *);
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} tu_call_t;


static void
tu_call_task(void *ud)
{
    tu_call_t *c = ud;

    c->fn(c->arg);
    pthread_mutex_lock(&c->mu);
    c->done = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}


void
tu_run_on(zn_loop_t *loop, void (*fn)(void *), void *arg)
{
    tu_call_t c = {fn, arg, PTHREAD_MUTEX_INITIALIZER,
                   PTHREAD_COND_INITIALIZER, 0};

    assert_int_equal(zn_loop_post(loop, tu_call_task, &c), 0);
    pthread_mutex_lock(&c.mu);
    while (!c.done)
        pthread_cond_wait(&c.cv, &c.mu);
    pthread_mutex_unlock(&c.mu);
    pthread_mutex_destroy(&c.mu);
    pthread_cond_destroy(&c.cv);
}


int
tu_connect_addr(const char *host, uint16_t port)
{
    struct sockaddr_storage ss;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    struct timeval tv = {10, 0};
    socklen_t len;
    int fd, one = 1;

    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        len = sizeof(*a4);
    } else {
        assert_int_equal(inet_pton(AF_INET6, host, &a6->sin6_addr), 1);
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        len = sizeof(*a6);
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        fprintf(stderr, "connect %s:%u: %s\n", host, port, strerror(errno));
        fail();
    }
    return fd;
}


int
tu_connect(uint16_t port)
{
    return tu_connect_addr("127.0.0.1", port);
}


void
tu_write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    ssize_t w;

    while (n > 0) {
        w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "send: %s\n", strerror(errno));
            fail();
        }
        s += w;
        n -= (size_t)w;
    }
}


int
tu_read_exact(int fd, void *p, size_t n)
{
    char *s = p;
    ssize_t r;

    while (n > 0) {
        r = recv(fd, s, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        s += r;
        n -= (size_t)r;
    }
    return 0;
}


long
tu_read_to_eof(int fd, size_t max, int *err_out)
{
    char buf[65536];
    long total = 0;
    ssize_t r;

    *err_out = 0;
    for (;;) {
        r = recv(fd, buf, sizeof(buf), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *err_out = -errno;
            return total;
        }
        if (r == 0 || (size_t)(total + r) > max)
            return total + r;
        total += r;
    }
}


int
tu_wait_until(int (*pred)(void *), void *arg, unsigned ms)
{
    struct timespec ts = {0, 1000000};
    unsigned i;

    for (i = 0; i < ms; i++) {
        if (pred(arg))
            return 1;
        nanosleep(&ts, NULL);
    }
    return pred(arg);
}


static unsigned char
tu_pattern_byte(uint32_t seed, size_t off)
{
    uint32_t x = seed ^ (uint32_t)(off * 2654435761u) ^ (uint32_t)(off >> 7);

    return (unsigned char)(x ^ (x >> 11) ^ (x >> 23));
}


void
tu_pattern(void *p, size_t n, uint32_t seed, size_t offset)
{
    unsigned char *s = p;
    size_t i;

    for (i = 0; i < n; i++)
        s[i] = tu_pattern_byte(seed, offset + i);
}


int
tu_pattern_check(const void *p, size_t n, uint32_t seed, size_t offset)
{
    const unsigned char *s = p;
    size_t i;

    for (i = 0; i < n; i++)
        if (s[i] != tu_pattern_byte(seed, offset + i))
            return 0;
    return 1;
}


int
tu_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}


void
tu_server_start(tu_server_t *ts, zn_server_opts_t *o)
{
    if (o->host == NULL)
        o->host = "127.0.0.1";
    assert_int_equal(zn_loop_new(&ts->loop), 0);
    assert_int_equal(zn_server_new(ts->loop, o, &ts->srv), 0);
    assert_int_equal(zn_server_start(ts->srv), 0);
    ts->port = zn_server_port(ts->srv);
    tu_loop_thread_start(&ts->lt, ts->loop);
}


void
tu_server_stop(tu_server_t *ts)
{
    tu_loop_thread_join(&ts->lt);
    zn_server_stop(ts->srv, 2000);
    zn_server_free(ts->srv);
    zn_loop_free(ts->loop);
}


zn_server_stats_t
tu_server_stats(tu_server_t *ts)
{
    zn_server_stats_t st;

    zn_server_stats(ts->srv, &st);
    return st;
}

/* ---- running out of memory ---------------------------------------------- */

static _Atomic int tu_refusing;


static void *
tu_malloc(size_t n)
{
    return atomic_load(&tu_refusing) ? NULL : malloc(n);
}


static void *
tu_realloc(void *p, size_t n)
{
    return atomic_load(&tu_refusing) ? NULL : realloc(p, n);
}


static void *
tu_calloc(size_t c, size_t n)
{
    return atomic_load(&tu_refusing) ? NULL : calloc(c, n);
}


void
tu_refusing_allocator(void)
{
    assert_int_equal(zn_set_allocator(tu_malloc, tu_realloc, tu_calloc,
                                      free), 0);
}


void
tu_refuse(bool on)
{
    atomic_store(&tu_refusing, on);
}

/* ---- a loop held busy ----------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int held, open;
} tu_gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};


static void
tu_hold_task(void *ud)
{
    (void)ud;
    pthread_mutex_lock(&tu_gate.mu);
    tu_gate.held = 1;
    pthread_cond_broadcast(&tu_gate.cv);
    while (!tu_gate.open)
        pthread_cond_wait(&tu_gate.cv, &tu_gate.mu);
    pthread_mutex_unlock(&tu_gate.mu);
}


static void
tu_filler_task(void *ud)
{
    atomic_fetch_add((_Atomic int *)ud, 1);
}


void
tu_hold_and_fill(zn_loop_t *loop, int fillers, _Atomic int *ran)
{
    int i;

    tu_gate.held = tu_gate.open = 0;
    assert_int_equal(zn_loop_post(loop, tu_hold_task, NULL), 0);
    pthread_mutex_lock(&tu_gate.mu);
    while (!tu_gate.held)
        pthread_cond_wait(&tu_gate.cv, &tu_gate.mu);
    pthread_mutex_unlock(&tu_gate.mu);
    for (i = 0; i < fillers; i++)
        assert_int_equal(zn_loop_post(loop, tu_filler_task, ran), 0);
}


void
tu_release(void)
{
    pthread_mutex_lock(&tu_gate.mu);
    tu_gate.open = 1;
    pthread_cond_broadcast(&tu_gate.cv);
    pthread_mutex_unlock(&tu_gate.mu);
}
