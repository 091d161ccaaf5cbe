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
struct zn__transport_s;

typedef struct zn__conn_group_s {
    const struct zn__transport_s *tp; /* how bytes move (transport.h) */
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

/*
 * What the connection's loop is asked to do, by other threads or by
 * itself for later: bits of `rq`, carried by the connection's one
 * embedded task, which is queued while any bit is set. Asking costs no
 * allocation and cannot fail.
 */
enum {
    ZN__RQ_START = 1,     /* run on_connect and start reading (a hand-off) */
    ZN__RQ_SHUTDOWN = 2,  /* zn_conn_shutdown() from another thread */
    ZN__RQ_CLOSE = 4,     /* a close from another thread; reason rq_reason */
    ZN__RQ_ABORT = 8,     /* the same, abortive */
    ZN__RQ_FLUSH = 16,    /* write what tasks queued */
    ZN__RQ_FINISH = 32    /* the second step of a close */
};

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
    zn_task_node_t task;       /* carries rq to the loop */
    _Atomic unsigned rq;       /* ZN__RQ_* asked and not yet done */
    _Atomic uint32_t sends_posted; /* send tasks posted from other threads */
    _Atomic uint32_t rq_mark;  /* sends_posted when a close/shutdown was
                                  asked from another thread */
    uint32_t sends_done;       /* send tasks run (loop thread) */
    _Atomic uint8_t rq_reason; /* of a close asked from another thread */
    uint8_t reason;            /* zn_close_reason_t once closing */
    uint8_t later_reason;      /* of a close waiting for posted sends */
    uint8_t in_cb;             /* depth of handler callbacks running */
    uint32_t idle_holds;       /* zn__conn_idle_hold() not yet released */
    unsigned paused_user : 1;
    unsigned paused_hwm : 1;
    unsigned eof : 1;
    unsigned shut_wr : 1;      /* shut the write side once flushed */
    unsigned shut_done : 1;
    unsigned abortive : 1;
    unsigned finishing : 1;    /* the finish is asked for */
    unsigned batching : 1;     /* sends wait for the end of on_data */
    unsigned batch_direct : 1; /* the batch may still write one large send */
    unsigned own_group : 1;    /* g was allocated for this connection */
    unsigned close_later : 1;  /* close once sends_done reaches rq_mark */
    unsigned shut_later : 1;   /* shut down then */
};

/*
 * Creates a connection over `fd` for `loop` without starting it; any
 * thread. Returns NULL (fd untouched) if out of memory. The group must
 * outlive the open connection. Then one of:
 *   zn__conn_start()    on the loop's thread: runs on_connect and starts
 *                       reading, at once;
 *   zn__conn_handoff()  from another loop's thread (a connection accepted
 *                       or connected there): the same, through the
 *                       connection's task, which cannot fail.
 */
zn_conn_t *zn__conn_new(zn_loop_t *loop, int fd, const zn__conn_group_t *g);

/*
 * On the loop thread: the idle time-out does not count while a hold is
 * out, and its clock starts again at the last release. The message layer
 * holds it while a request of the connection is being handled, so that a
 * peer waiting in silence for a slow answer is not idle.
 */
void zn__conn_idle_hold(zn_conn_t *c);
void zn__conn_idle_release(zn_conn_t *c);
void zn__conn_start(zn_conn_t *c);
void zn__conn_handoff(zn_conn_t *c);

/*
 * On the loop thread, from a posted task: queues the bytes without writing
 * and makes sure one flush runs after the current batch of tasks, so that
 * many answers arriving through the task queue (from workers, from other
 * threads) leave in one system call. Returns as zn_conn_send().
 */
int zn__conn_send_deferred(zn_conn_t *c, const void *data, size_t len);

/* A process-wide fresh connection id (never reused). */
uint64_t zn__conn_next_id(void);


#endif /* ZNET_CONN_INT_H */
