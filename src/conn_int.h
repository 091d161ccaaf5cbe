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

/*
 * What a group of connections shares (a server's on one loop, a client's):
 * the handler, the limits, the counters, and who to tell when one closes.
 * One pointer per connection instead of five keeps idle connections small.
 */
typedef struct zn__conn_group_s {
    const zn_handler_t *h;
    const zn_conn_limits_t *limits;
    zn__conn_stats_t *stats;
    zn__conn_closed_fn closed_fn;   /* may be NULL */
    void *owner;
    _Atomic size_t *in_held;        /* input storage held by the whole
                                       server; NULL: not counted */
    size_t in_budget;               /* bound of *in_held; 0: none */
} zn__conn_group_t;

/* Allocated only when a connection needs a time-out (idle time-out,
 * deadline, close linger): most idle connections never do. */
typedef struct {
    zn_timer_t t;
    uint64_t last_input;       /* loop ms of the last read */
    uint64_t deadline;         /* loop ms; 0: none (zn_conn_set_deadline) */
    uint64_t paused_since;     /* loop ms reading paused at; 0: reading */
} zn__conn_timer_t;

struct zn_conn_s {
    _Atomic uint32_t refs;
    _Atomic int state;
    uint64_t id;
    zn_io_t io;                /* io.loop is the connection's loop */
    zn_buf_t *in;              /* NULL while nothing waits to be read */
    zn_buf_t *out;             /* NULL while nothing waits to be written */
    const zn__conn_group_t *g;
    _Atomic(void *) data;
    _Atomic size_t posted;     /* bytes sent from other threads, in flight */
    zn__conn_timer_t *tm;
    uint16_t in_cb;            /* depth of handler callbacks running */
    uint8_t reason;            /* zn_close_reason_t once closing */
    unsigned paused_user : 1;
    unsigned paused_hwm : 1;
    unsigned eof : 1;
    unsigned shut_wr : 1;      /* shutdown(SHUT_WR) once flushed */
    unsigned shut_done : 1;
    unsigned abortive : 1;
    unsigned finish_posted : 1;
    unsigned batching : 1;     /* sends wait for the end of on_data */
    unsigned batch_direct : 1; /* the batch may still write one large send */
    unsigned own_group : 1;    /* g was allocated for this connection */
    unsigned flush_posted : 1; /* a deferred flush is queued on the loop */
    unsigned finish_pending : 1; /* finish once the callbacks return */
};

/*
 * Creates a connection over `fd` on `loop` (the caller's thread) without
 * starting it; zn__conn_start() then runs on_connect and starts reading.
 * The group must outlive the open connection. Returns NULL (fd untouched)
 * if out of memory.
 */
zn_conn_t *zn__conn_new(zn_loop_t *loop, int fd, const zn__conn_group_t *g);
void zn__conn_start(zn_conn_t *c);

/*
 * On the loop thread, from a posted task: queues the bytes without writing
 * and makes sure one flush runs after the current batch of tasks, so that
 * many answers arriving through the task queue (from workers, from other
 * threads) leave in one system call. Returns as zn_conn_send().
 */
int zn__conn_send_deferred(zn_conn_t *c, const void *data, size_t len);

/* A process-wide fresh connection id (never reused). */
uint64_t zn__conn_next_id(void);

/* The default counters of a loop, for connections without an owner. */
zn__conn_stats_t *zn__loop_conn_stats(zn_loop_t *loop);

#endif /* ZNET_CONN_INT_H */
