/*
 * znet/server.h: a TCP or Unix-socket server, and its threading models.
 *
 * A server listens on the loop it is created on (the main loop) and hands
 * each accepted connection to one loop, where the connection lives for
 * good:
 *
 *   io_threads = 0   the main loop accepts and also runs every connection
 *                    (the seed's TcpServer);
 *   io_threads = N   the server starts N IO loops, each on its own thread;
 *                    the main loop only accepts, and passes each new
 *                    connection to an IO loop, round robin or to the loop
 *                    with the fewest connections, through that loop's task
 *                    queue and eventfd (the seed's TcpServerMt). With
 *                    reuseport, each IO loop has its own listener instead.
 *
 * Loop-thread only (the main loop's thread) unless marked.
 */
#ifndef ZNET_SERVER_H
#define ZNET_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "conn.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_server_s zn_server_t;

typedef enum {
    ZN_BALANCE_ROUND_ROBIN = 0,
    ZN_BALANCE_LEAST_CONNS = 1
} zn_balance_t;

typedef struct {
    /* Where to listen: "127.0.0.1", "::1", "0.0.0.0", "::", or
     * "unix:/path" (then `port` is ignored). NULL: "0.0.0.0". */
    const char *host;
    uint16_t port;          /* 0: any free port (see zn_server_port) */
    int backlog;            /* listen() backlog; 0: 511 */
    bool reuseport;         /* SO_REUSEPORT, one listener per IO loop */
    bool no_nodelay;        /* leave Nagle on (TCP_NODELAY is the default) */
    unsigned io_threads;    /* 0: the main loop runs every connection;
                               at most 256 (else ZN_EINVAL) */
    zn_balance_t balance;   /* how connections are spread over IO loops */
    unsigned max_conns;     /* 0: unlimited (bounded by descriptors) */
    unsigned accepts_per_wakeup; /* 0: 64 */
    uint64_t emfile_backoff_ms;  /* first pause after EMFILE; 0: 100 */
    zn_conn_limits_t limits;     /* for each connection; see conn.h */
    /* Bytes of unread input (partial messages) that all the server's
     * connections may hold together. A read that takes the total past it
     * closes the connection that made it (ZN_CLOSE_INPUT_BUDGET), so that
     * many peers each holding a partial message below its own bound
     * (limits.in_max) cannot add up to exhaust memory. 0: no bound;
     * default 1 GiB. */
    size_t in_budget;
    /* Bytes written (best effort, never blocking) to a connection refused
     * over max_conns before it is closed, such as a protocol's
     * "overloaded" error. Copied by zn_server_new(). */
    const void *reject_data;
    size_t reject_len;
    zn_handler_t handler;        /* callbacks for every connection */
} zn_server_opts_t;

/* Fills opts with the defaults (limits from zn_conn_limits_default()). */
ZN_EXTERN void zn_server_opts_default(zn_server_opts_t *opts);

typedef struct {
    uint64_t conns_live;        /* open now */
    uint64_t conns_accepted;    /* accepted and opened */
    uint64_t conns_rejected;    /* accepted and closed at once (max_conns) */
    uint64_t emfile_events;     /* accept() failed with EMFILE/ENFILE */
    uint64_t accept_errors;     /* other accept() failures */
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t sends_dropped;     /* cross-thread sends to a closed conn */
    uint64_t closes[ZN_CLOSE_REASON_MAX]; /* by zn_close_reason_t */
    uint64_t high_water_events; /* times reading paused at the mark */
    uint64_t tasks_queued;      /* posted tasks waiting, over all loops */
    uint64_t in_held;           /* bytes of unread input held now, all
                                   connections (see in_budget) */
} zn_server_stats_t;

/*
 * Creates a server on `loop` and stores it in *out. The options are copied
 * (host too). Does not listen yet. Returns 0, ZN_EINVAL, ZN_ENOMEM.
 */
ZN_EXTERN int zn_server_new(zn_loop_t *loop, const zn_server_opts_t *opts,
                            zn_server_t **out);

/*
 * Binds, listens and starts accepting; starts the IO threads. Returns 0, or
 * the error of socket/bind/listen/pthread_create (the server is then as
 * before the call).
 */
ZN_EXTERN int zn_server_start(zn_server_t *s);

/*
 * Stops accepting and closes the listeners: the main loop's, and with
 * reuseport those of the IO loops (each closed on its own loop; the call
 * waits until they are). Open connections stay open. Idempotent.
 */
ZN_EXTERN void zn_server_stop_accepting(zn_server_t *s);

/*
 * Stops the server: stops accepting, closes every connection (graceful:
 * their queued output is flushed, for at most `drain_ms`; 0: abortive)
 * after the tasks already queued on its loop have run (answers posted by
 * workers before the call reach their connections first),
 * stops and joins the IO threads. Returns when all is done; on the main
 * loop's thread, with the main loop not inside zn_loop_run() or inside a
 * callback of it. Idempotent. The IO loops themselves stay until
 * zn_server_free(), so that an answer posted late to a connection of
 * theirs is dropped safely, and the counters stay readable.
 */
ZN_EXTERN void zn_server_stop(zn_server_t *s, uint64_t drain_ms);

/* Stops the server if needed and frees it, with its IO loops (running the
 * tasks still posted to them, so that what they carry is released). */
ZN_EXTERN void zn_server_free(zn_server_t *s);

/* The port bound (useful with port 0). Any thread after start. */
ZN_EXTERN uint16_t zn_server_port(const zn_server_t *s);

/*
 * Finds an open connection by id and returns it with a new reference (the
 * caller must zn_conn_unref it), or NULL if it is gone. Any thread.
 */
ZN_EXTERN zn_conn_t *zn_server_find(zn_server_t *s, uint64_t id);

/* Calls cb for each open connection with a reference held during the
 * call. Any thread (the connections may close meanwhile). */
ZN_EXTERN void zn_server_foreach(zn_server_t *s,
                                 void (*cb)(zn_conn_t *c, void *arg),
                                 void *arg);

/* Reads the counters, summed over the server's loops. Any thread. After
 * zn_server_stop() they still hold the whole run's totals. */
ZN_EXTERN void zn_server_stats(const zn_server_t *s, zn_server_stats_t *st);

/* The loop the server was created on (the main loop). Any thread. */
ZN_EXTERN zn_loop_t *zn_server_main_loop(const zn_server_t *s);

/* The loops a server uses: index 0 .. io_threads-1 (the main loop alone
 * when io_threads is 0). Any thread after start. */
ZN_EXTERN unsigned zn_server_loop_count(const zn_server_t *s);
ZN_EXTERN zn_loop_t *zn_server_loop(const zn_server_t *s, unsigned i);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_SERVER_H */
