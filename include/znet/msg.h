/*
 * znet/msg.h: the protobuf message layer (the seed's RequestMfcMap and
 * AsyncRequestMfcMap): a command table mapping a command id to a protobuf
 * request type and a handler, a service that speaks protocol v1 (see
 * docs/protocol.md) on a server's connections and dispatches requests to
 * the handlers, on the loop thread or on a pool of worker threads.
 *
 * Typical use:
 *
 *     zn_msg_table_t *t;
 *     zn_msg_table_new(&t);
 *     zn_msg_table_register(t, 1, &demo__test_req__descriptor, on_test, app);
 *     zn_msg_service_t *svc;
 *     zn_msg_opts_t mo;
 *     zn_msg_opts_default(&mo);
 *     mo.workers = 4;                       (0: handlers run on the loop)
 *     zn_msg_service_new(t, &mo, &svc);
 *     zn_server_opts_t so;
 *     zn_server_opts_default(&so);
 *     zn_msg_service_bind(svc, &so);        (fills handler and limits)
 *     ... zn_server_new(loop, &so, &srv); zn_server_start(srv); ...
 *
 * Threads: the table is filled before the service is created and is
 * read-only afterwards. Handlers run on the connection's loop thread
 * (workers = 0) or on a worker thread. Every zn_msg_req_* function may be
 * called from the thread running the handler, or, for a deferred request,
 * from any thread. zn_msg_push() is safe from any thread.
 */
#ifndef ZNET_MSG_H
#define ZNET_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common.h"
#include "conn.h"
#include "frame.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_msg_table_s zn_msg_table_t;
typedef struct zn_msg_service_s zn_msg_service_t;
typedef struct zn_msg_req_s zn_msg_req_t;

/*
 * A request handler. `msg` is the decoded request, of the type registered
 * for the command; it belongs to the request and is freed when the request
 * ends. The handler answers with zn_msg_reply() or zn_msg_reply_error()
 * before it returns, or calls zn_msg_req_defer() and answers later (from
 * any thread). A request that the handler neither answered nor deferred is
 * answered with INTERNAL ("no reply"). ONEWAY requests get no answer: the
 * reply functions then do nothing and return 0.
 */
typedef void (*zn_msg_handler_cb)(zn_msg_req_t *req,
                                  const ProtobufCMessage *msg, void *ud);

/* ---- command table --------------------------------------------------- */

ZN_EXTERN int zn_msg_table_new(zn_msg_table_t **out);
ZN_EXTERN void zn_msg_table_free(zn_msg_table_t *t);

/*
 * Registers `cmd` -> (request type, handler, user pointer). Returns 0,
 * ZN_EEXIST if cmd is taken, ZN_EINVAL (NULL descriptor or handler),
 * ZN_ENOMEM. Not after the table is given to a service.
 */
ZN_EXTERN int zn_msg_table_register(zn_msg_table_t *t, uint32_t cmd,
                                    const ProtobufCMessageDescriptor *req,
                                    zn_msg_handler_cb cb, void *ud);

/*
 * Sets the decode budget of one command (see zn_msg_opts_t.decode_budget),
 * for a request type made of long lists of small elements. 0: the
 * service's. Returns 0, ZN_ENOENT (cmd not registered), ZN_EINVAL (the
 * table is given to a service already).
 */
ZN_EXTERN int zn_msg_table_set_budget(zn_msg_table_t *t, uint32_t cmd,
                                      size_t bytes);

/* ---- service --------------------------------------------------------- */

typedef struct {
    uint32_t max_body;         /* largest request body; 0: 4 MiB */
    uint64_t frame_deadline_ms;/* first byte to last of a frame; 0: 30 s;
                                  UINT64_MAX: off */
    uint64_t idle_ms;          /* no input for this long while none of the
                                  connection's requests is being handled:
                                  close (ZN_CLOSE_IDLE); the clock starts
                                  again at the last answer. A frame that
                                  comes too slowly is frame_deadline_ms's
                                  business. 0: off */
    unsigned max_depth;        /* protobuf nesting limit; 0: 64 */
    unsigned workers;          /* 0: handlers run on the loop thread;
                                  at most 1024 (else ZN_EINVAL) */
    unsigned queue_max;        /* requests waiting for a worker, in all;
                                  0: 1024 per worker. Over it: OVERLOADED */
    bool ordered;              /* one connection's requests always go to
                                  the same worker, so replies keep order */
    /* Bytes that decoding one request may allocate (protobuf-c's
     * allocations, bounded from the body's bytes before anything is
     * allocated; see docs/protocol.md, "The decode bound"). A request
     * over it gets BAD_REQUEST. 0: its body's size + 64 KiB, so that the
     * input and the decoded message stay near twice the body; types of
     * long lists of tiny elements need more (zn_msg_table_set_budget()
     * sets it per command). */
    size_t decode_budget;
    /* Bytes of decoded requests alive at once in the service (waiting
     * for a worker, running, deferred): a request whose bound would pass
     * it gets OVERLOADED before it is decoded. 0: 64 MiB. */
    size_t max_held;
} zn_msg_opts_t;

ZN_EXTERN void zn_msg_opts_default(zn_msg_opts_t *o);

typedef struct {
    uint64_t requests;         /* complete request frames received */
    uint64_t replies;          /* responses written (errors included) */
    uint64_t errors_sent[6];   /* by code 1..5; [0]: application codes */
    uint64_t oneway;           /* ONEWAY requests handled */
    uint64_t bad_frames;       /* connections closed: bad magic, version,
                                  flags */
    uint64_t too_large;        /* connections closed: length over limit */
    uint64_t deadline_closes;  /* connections closed: frame deadline */
    uint64_t responses_dropped;/* RESPONSE frames received by a server */
    uint64_t late_replies;     /* replies for a connection already closed */
    uint64_t overloaded;       /* requests refused: worker queue full, or
                                  max_held */
    uint64_t queued;           /* requests waiting for a worker now */
    uint64_t in_flight;        /* requests being handled now */
    uint64_t handoffs;         /* chains of requests given to the worker
                                  pool, each with one lock and wake-up:
                                  requests / handoffs is the batch size */
    uint64_t held;             /* bytes of decoded requests alive now */
    uint64_t held_peak;        /* the most at once (see max_held) */
} zn_msg_stats_t;

/*
 * Creates a service over a filled table (which must outlive the service)
 * and starts its worker threads. Returns 0, ZN_EINVAL, ZN_ENOMEM, or the
 * error of pthread_create.
 */
ZN_EXTERN int zn_msg_service_new(zn_msg_table_t *t, const zn_msg_opts_t *o,
                                 zn_msg_service_t **out);

/*
 * Sets a server's handler to this service, and the limits that the
 * protocol needs (input bound from max_body, idle time-out). Also sets the
 * bytes refused connections get: an OVERLOADED error with seq 0. Call
 * before zn_server_new(); one service may serve several servers.
 */
ZN_EXTERN void zn_msg_service_bind(zn_msg_service_t *svc,
                                   zn_server_opts_t *so);

/* The handler alone, for a client connection or an adopted one. */
ZN_EXTERN const zn_handler_t *zn_msg_service_handler(zn_msg_service_t *svc);

/*
 * Starts a graceful shutdown: new requests are answered SHUTTING_DOWN;
 * requests already received go on. Any thread.
 */
ZN_EXTERN void zn_msg_service_shutdown(zn_msg_service_t *svc);

/* Requests received and not yet answered (queued or running). Any
 * thread. */
ZN_EXTERN uint64_t zn_msg_service_pending(const zn_msg_service_t *svc);

/*
 * Stops and joins the workers; requests still queued are answered
 * SHUTTING_DOWN, and so is every request that arrives later. Call while
 * the loops of the connections still exist (before zn_server_free()), so
 * that those answers reach them. Idempotent.
 */
ZN_EXTERN void zn_msg_service_stop(zn_msg_service_t *svc);

/*
 * The graceful shutdown of a server that this service serves, in one call:
 * answers new requests SHUTTING_DOWN, stops accepting (every listener),
 * lets the requests in flight finish (on the loop, on workers, deferred),
 * stops the workers, then closes every connection gracefully so that the
 * replies are flushed, and stops the server; all within `timeout_ms`, after
 * which what is left is cut short (requests still queued for a worker are
 * answered SHUTTING_DOWN, connections still flushing are reset). Runs the
 * server's main loop itself: call it on the main loop's thread after
 * zn_loop_run() has returned (from a signal handler's zn_loop_stop(), for
 * instance), never from inside a callback. The server must still be
 * freed (zn_server_free), and the service too. Returns 0 when everything
 * finished in time, ZN_ETIMEDOUT when the limit cut something short.
 */
ZN_EXTERN int zn_msg_service_drain(zn_msg_service_t *svc, zn_server_t *srv,
                                   uint64_t timeout_ms);

/*
 * Stops the service if needed and frees it. Call after the servers using
 * it have stopped, and after every deferred request has been answered.
 */
ZN_EXTERN void zn_msg_service_free(zn_msg_service_t *svc);

ZN_EXTERN void zn_msg_service_stats(const zn_msg_service_t *svc,
                                    zn_msg_stats_t *st);

/* ---- requests -------------------------------------------------------- */

ZN_EXTERN uint32_t zn_msg_req_cmd(const zn_msg_req_t *req);
ZN_EXTERN uint32_t zn_msg_req_seq(const zn_msg_req_t *req);
ZN_EXTERN bool zn_msg_req_oneway(const zn_msg_req_t *req);

/* The connection the request came on (no new reference: valid while the
 * request is; take one with zn_conn_ref() to keep it longer). */
ZN_EXTERN zn_conn_t *zn_msg_req_conn(const zn_msg_req_t *req);

/*
 * Answers the request with `rsp` (packed at once; the caller keeps `rsp`).
 * Ends the request: `req` and the request message are freed. Returns 0,
 * ZN_EALREADY if it was answered, ZN_ENOTCONN if the connection is gone
 * (the reply is dropped and counted as late), ZN_ENOMEM, ZN_EMSGSIZE if
 * the reply is larger than a frame can carry.
 */
ZN_EXTERN int zn_msg_reply(zn_msg_req_t *req, const ProtobufCMessage *rsp);

/* Answers with an error response (code, text). Same returns. */
ZN_EXTERN int zn_msg_reply_error(zn_msg_req_t *req, uint32_t code,
                                 const char *text);

/*
 * Keeps the request after the handler returns; it must then be answered
 * exactly once, from any thread. Holds a reference on the connection.
 */
ZN_EXTERN void zn_msg_req_defer(zn_msg_req_t *req);

/*
 * Sends a frame of its own (RESPONSE clear, ONEWAY set, seq 0) on a
 * connection: a server push. Any thread. Returns 0, ZN_ENOTCONN,
 * ZN_ENOMEM, ZN_ENOBUFS (see zn_conn_send), ZN_EMSGSIZE.
 */
ZN_EXTERN int zn_msg_push(zn_conn_t *c, uint32_t cmd,
                          const ProtobufCMessage *msg);

/*
 * Packs one frame (16-byte header + body) into a new buffer: *out, *len.
 * The caller frees it with free()-compatible zn_msg_frame_free(). For
 * tools and tests. Returns 0, ZN_ENOMEM, ZN_EMSGSIZE.
 */
ZN_EXTERN int zn_msg_pack_frame(uint32_t cmd, uint32_t seq, uint8_t flags,
                                const ProtobufCMessage *msg, uint8_t **out,
                                size_t *len);
ZN_EXTERN void zn_msg_frame_free(uint8_t *frame);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_MSG_H */
