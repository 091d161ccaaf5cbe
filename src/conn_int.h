/*
 * conn_int.h: the connection's layout, for servers and clients.
 */
#ifndef ZNET_CONN_INT_H
#define ZNET_CONN_INT_H

#include <stdatomic.h>
#include <stdbool.h>

#include "internal.h"
#include "znet/conn.h"

/* Counters of a group of connections (a server's on one loop, a client's).
 * Written on one loop thread, read from any. */
typedef struct zn__conn_stats_s {
    _Atomic uint64_t live, accepted, rejected, emfile, accept_errors;
    _Atomic uint64_t bytes_in, bytes_out, sends_dropped, high_water;
    _Atomic uint64_t closes[ZN_CLOSE_REASON_MAX];
} zn__conn_stats_t;

enum { ZN__OPEN = 0, ZN__CLOSING = 1, ZN__CLOSED = 2 };

/* Called on the loop when a connection has closed, after on_close. */
typedef void (*zn__conn_closed_fn)(zn_conn_t *c, void *owner);

struct zn_conn_s {
    _Atomic uint32_t refs;
    _Atomic int state;
    uint64_t id;
    zn_loop_t *loop;
    zn_io_t io;
    zn_buf_t in;
    zn_buf_t out;
    const zn_handler_t *h;
    const zn_conn_limits_t *limits;
    zn__conn_stats_t *stats;
    zn__conn_closed_fn closed_fn;
    void *owner;
    _Atomic(void *) data;
    _Atomic size_t posted;     /* bytes sent from other threads, in flight */
    zn_timer_t timer;          /* idle time-out, then close linger */
    uint64_t last_input;       /* loop ms of the last read */
    uint64_t deadline;         /* loop ms; 0: none (zn_conn_set_deadline) */
    unsigned in_cb;            /* depth of handler callbacks running */
    unsigned char reason;      /* zn_close_reason_t once closing */
    unsigned paused_user : 1;
    unsigned paused_hwm : 1;
    unsigned eof : 1;
    unsigned shut_wr : 1;      /* shutdown(SHUT_WR) once flushed */
    unsigned shut_done : 1;
    unsigned abortive : 1;
    unsigned finish_posted : 1;
    unsigned batching : 1;     /* sends wait for the end of on_data */
};

/*
 * Creates a connection over `fd` on `loop` (the caller's thread) without
 * starting it; zn__conn_start() then runs on_connect and starts reading.
 * `h`, `limits` and `stats` must outlive the open connection. Returns NULL
 * (fd untouched) if out of memory.
 */
zn_conn_t *zn__conn_new(zn_loop_t *loop, int fd, const zn_handler_t *h,
                        const zn_conn_limits_t *limits,
                        zn__conn_stats_t *stats);
void zn__conn_start(zn_conn_t *c);

/* A process-wide fresh connection id (never reused). */
uint64_t zn__conn_next_id(void);

/* The default counters of a loop, for connections without an owner. */
zn__conn_stats_t *zn__loop_conn_stats(zn_loop_t *loop);

#endif /* ZNET_CONN_INT_H */
