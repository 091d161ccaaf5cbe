/*
 * testutil.h: helpers for znet's tests: a loop on a thread, blocking
 * loopback clients with time-outs, and a per-test alarm.
 */
#ifndef ZNET_TESTUTIL_H
#define ZNET_TESTUTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "znet/znet.h"

/* Fails the test (and so the process) if it runs longer than `seconds`. */
void tu_alarm(unsigned seconds);

/* A loop running on its own thread. */
typedef struct {
    zn_loop_t *loop;
    pthread_t thread;
} tu_loop_thread_t;

void tu_loop_thread_start(tu_loop_thread_t *lt, zn_loop_t *loop);
void tu_loop_thread_join(tu_loop_thread_t *lt);

/* Runs fn(arg) on the loop's thread and waits until it has run. */
void tu_run_on(zn_loop_t *loop, void (*fn)(void *), void *arg);

/* A blocking TCP client on 127.0.0.1:port with 10 s send/receive
 * time-outs. Fails the test on error. */
int tu_connect(uint16_t port);
int tu_connect_addr(const char *host, uint16_t port);

/* Writes all, or fails the test. */
void tu_write_all(int fd, const void *p, size_t n);

/* Reads exactly n bytes; returns 0, or -1 on EOF/error/time-out. */
int tu_read_exact(int fd, void *p, size_t n);

/* Reads until EOF (or an error); returns the byte count, or -errno of the
 * error that ended it when nothing more could be read. */
long tu_read_to_eof(int fd, size_t max, int *err_out);

/* Waits (polling every ms) until pred(arg) is true or `ms` pass; returns
 * the last value of the predicate. */
int tu_wait_until(int (*pred)(void *), void *arg, unsigned ms);

/* Fills a buffer with a pattern that depends on (seed, offset). */
void tu_pattern(void *p, size_t n, uint32_t seed, size_t offset);
int tu_pattern_check(const void *p, size_t n, uint32_t seed, size_t offset);

/* Number of open descriptors of this process. */
int tu_count_fds(void);

/*
 * An allocator hook that refuses every allocation while told to: installs
 * it (call first in main, before any other znet call), and switches the
 * refusal on and off from any thread.
 */
void tu_refusing_allocator(void);
void tu_refuse(bool on);

/*
 * Holds `loop` busy inside a task (from another thread; returns once the
 * loop is held) and queues `fillers` tasks behind it that count into
 * *ran; tu_release() lets the loop go on. One hold at a time.
 */
void tu_hold_and_fill(zn_loop_t *loop, int fillers, _Atomic int *ran);
void tu_release(void);

#endif /* ZNET_TESTUTIL_H */

/* A server on a loop that runs on its own thread, for tests. */
typedef struct {
    zn_loop_t *loop;
    zn_server_t *srv;
    tu_loop_thread_t lt;
    uint16_t port;
} tu_server_t;

/* Starts a server with `o` on 127.0.0.1, port 0, and runs its loop on a
 * thread. */
void tu_server_start(tu_server_t *ts, zn_server_opts_t *o);

/* Stops the loop thread, then the server (graceful, up to 2 s), and
 * frees both. */
void tu_server_stop(tu_server_t *ts);

/* The server's counters (read from this thread; they are atomic). */
zn_server_stats_t tu_server_stats(tu_server_t *ts);
