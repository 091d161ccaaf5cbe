/*
 * znet/conn.h: a TCP (or Unix-socket) connection and the handler interface.
 *
 * A connection belongs to one loop for its whole life; all its IO and all
 * its handler callbacks happen on that loop's thread. It is reference
 * counted (atomically): the loop holds one reference while it is open and
 * another across every callback, so a handler may close the connection it
 * is called for. Code that keeps a connection beyond a callback, or hands it
 * to another thread, takes its own reference with zn_conn_ref() and gives it
 * back with zn_conn_unref(). The memory goes with the last reference.
 *
 * Loop-thread only unless marked. zn_conn_send(), zn_conn_close(),
 * zn_conn_abort(), zn_conn_shutdown(), zn_conn_ref(), zn_conn_unref(),
 * zn_conn_id(), zn_conn_loop(), zn_conn_is_open() and the user-data
 * functions are safe from any thread.
 */
#ifndef ZNET_CONN_H
#define ZNET_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"
#include "common.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_conn_s zn_conn_t;

/* Why a connection closed; the close callback gets it, and the stats count
 * closes by reason. */
typedef enum {
    ZN_CLOSE_LOCAL = 0,     /* zn_conn_close()/zn_conn_abort() */
    ZN_CLOSE_PEER,          /* the peer closed (EOF) */
    ZN_CLOSE_ERROR,         /* read/write error, reset by peer */
    ZN_CLOSE_OUTPUT_CAP,    /* queued output passed the hard bound */
    ZN_CLOSE_IDLE,          /* idle time-out */
    ZN_CLOSE_DEADLINE,      /* frame deadline (set by a protocol handler) */
    ZN_CLOSE_PROTOCOL,      /* the handler found a protocol violation */
    ZN_CLOSE_INPUT_CAP,     /* unconsumed input passed its bound */
    ZN_CLOSE_MAX_CONNS,     /* refused: over the connection limit */
    ZN_CLOSE_SHUTDOWN,      /* server or client stopped */
    ZN_CLOSE_CONNECT,       /* a client's connect failed or timed out */
    ZN_CLOSE_NOMEM,         /* an allocation failed */
    ZN_CLOSE_INPUT_BUDGET,  /* the server's unread input passed its budget
                               (zn_server_opts_t.in_budget) */
    ZN_CLOSE_REASON_MAX
} zn_close_reason_t;

/* A short name for a close reason ("peer", "output_cap"). */
ZN_EXTERN const char *zn_close_reason_name(zn_close_reason_t r);

/*
 * The handler: what a server or client calls for each of its connections,
 * on the connection's loop thread. Every callback is optional (NULL) and
 * gets the `ud` of the handler struct.
 *
 * on_connect     the connection is open (accepted, or connected).
 * on_data        bytes arrived; `in` holds everything received and not yet
 *                consumed. Consume what was handled (zn_buf_consume); what
 *                is left stays for the next call. Replies sent during
 *                on_data are batched and written once it returns (see
 *                zn_conn_send() for the one exception).
 * on_eof         the peer shut down its write side. NULL means: close
 *                gracefully (flush queued output, then close). A handler
 *                with work in flight closes later itself.
 * on_write_done  the output queue has been fully written.
 * on_high_water  queued output passed the high-water mark; reading from
 *                this peer is paused until the queue drains below the low
 *                mark. `queued` is the number of bytes waiting.
 * on_close       the connection closed; called exactly once, after the
 *                last other callback. Queued output is gone. The
 *                connection stays valid until the callback returns (and
 *                after it, for holders of a reference).
 */
typedef struct zn_handler_s {
    void (*on_connect)(zn_conn_t *c, void *ud);
    void (*on_data)(zn_conn_t *c, zn_buf_t *in, void *ud);
    void (*on_eof)(zn_conn_t *c, void *ud);
    void (*on_write_done)(zn_conn_t *c, void *ud);
    void (*on_high_water)(zn_conn_t *c, size_t queued, void *ud);
    void (*on_close)(zn_conn_t *c, zn_close_reason_t reason, void *ud);
    void *ud;
} zn_handler_t;

/* Limits of one connection; zn_conn_limits_default() gives DESIGN.md's
 * defaults (high 4 MiB, low 1 MiB, hard 64 MiB, input 64 MiB, idle off,
 * linger 30 s). The handler, limits and counters a connection is given
 * must outlive it while it is open. */
typedef struct {
    size_t out_high;       /* high-water mark of queued output */
    size_t out_low;        /* reading resumes below this */
    size_t out_hard;       /* close past this; 0: no bound */
    size_t in_max;         /* close if unconsumed input passes it; 0: none */
    uint64_t idle_ms;      /* close after this long with no input; 0: off */
    uint64_t linger_ms;    /* a graceful close that has not flushed after
                              this long turns abortive; 0: 30 s */
} zn_conn_limits_t;

ZN_EXTERN void zn_conn_limits_default(zn_conn_limits_t *l);

/* ---- any thread ---------------------------------------------------- */

ZN_EXTERN void zn_conn_ref(zn_conn_t *c);
ZN_EXTERN void zn_conn_unref(zn_conn_t *c);

/* The connection's id: unique in the process, never reused. */
ZN_EXTERN uint64_t zn_conn_id(const zn_conn_t *c);
ZN_EXTERN zn_loop_t *zn_conn_loop(const zn_conn_t *c);

/* True until the connection starts to close (a graceful close that is
 * still flushing counts as closed). */
ZN_EXTERN bool zn_conn_is_open(const zn_conn_t *c);

/*
 * Queues `len` bytes to be written. The data is copied; the caller keeps
 * its buffer. On the loop thread, outside on_data, the bytes are written
 * at once if the queue is empty and only what the socket did not take is
 * queued; inside on_data they are written when on_data returns, except
 * the first send of the call when it is 4 KiB or more and nothing is
 * queued: that one is written at once like outside on_data (a large reply
 * gains nothing from waiting, and is then never copied). From
 * another thread, the copy is posted to the loop and written there in
 * posting order.
 * Returns 0; ZN_ENOTCONN if the connection is closed or closing (nothing
 * happens); ZN_ENOMEM. On the loop thread, if the queue would pass the hard
 * bound the connection is closed (reason ZN_CLOSE_OUTPUT_CAP) and
 * ZN_ENOBUFS is returned. From another thread, ZN_ENOBUFS means that the
 * bytes already posted and not yet queued by the loop would pass the hard
 * bound: nothing was sent, the connection stays open, try again later. Data
 * posted from another thread to a connection that closes before the loop
 * runs the post is dropped and counted (stats: sends_dropped).
 */
ZN_EXTERN int zn_conn_send(zn_conn_t *c, const void *data, size_t len);

/* Like zn_conn_send(), for several pieces written as one message. */
ZN_EXTERN int zn_conn_sendv(zn_conn_t *c, const struct iovec *iov, int n);

/*
 * Graceful close: stops reading, writes what is queued, then closes.
 * Abortive close: drops queued output and closes at once with a reset
 * (SO_LINGER 0). Both are idempotent (a later abort turns a graceful close
 * that is still flushing into an abortive one). From another thread they
 * are carried to the loop by the connection's own task (nothing is
 * allocated: they cannot fail), and a graceful one comes after the data
 * that thread sent before it. The close callback runs once, on the loop.
 */
ZN_EXTERN void zn_conn_close(zn_conn_t *c);
ZN_EXTERN void zn_conn_abort(zn_conn_t *c);

/* Closes with a given reason (counted in the stats); `abortive` as above. */
ZN_EXTERN void zn_conn_close_reason(zn_conn_t *c, zn_close_reason_t reason,
                                    bool abortive);

/* Half-close: shuts down the write side once the queue is flushed; reading
 * goes on until the peer closes. */
ZN_EXTERN void zn_conn_shutdown(zn_conn_t *c);

/* A user pointer that znet never touches. Any thread (atomic). */
ZN_EXTERN void zn_conn_set_data(zn_conn_t *c, void *data);
ZN_EXTERN void *zn_conn_get_data(const zn_conn_t *c);

/* ---- loop thread --------------------------------------------------- */

/* Pauses and resumes reading (independently of the high-water pause). */
ZN_EXTERN void zn_conn_pause_read(zn_conn_t *c);
ZN_EXTERN void zn_conn_resume_read(zn_conn_t *c);

/* Bytes queued for writing. */
ZN_EXTERN size_t zn_conn_out_len(const zn_conn_t *c);

/*
 * Arms the connection's deadline `ms` from now (0: clears it). If it is
 * neither cleared nor moved before it passes, the connection is closed
 * abortively with reason ZN_CLOSE_DEADLINE. One deadline per connection,
 * for protocol handlers (the message layer's frame deadline). Cheap: it
 * shares the connection's timer and only moves it when it must fire
 * earlier.
 */
ZN_EXTERN void zn_conn_set_deadline(zn_conn_t *c, uint64_t ms);

/* The socket's descriptor (-1 once closed). Do not close it. */
ZN_EXTERN int zn_conn_fd(const zn_conn_t *c);

/* The peer's address as "1.2.3.4:5" or "[::1]:5", read from the socket
 * into a per-thread buffer (valid until the next call on this thread);
 * "unix#ID" for a Unix socket, "conn#ID" once the socket is closed. For log
 * lines. */
ZN_EXTERN const char *zn_conn_peer(const zn_conn_t *c);

/* Replaces the limits of this connection alone (for example from
 * on_connect); `l` must outlive the connection while it is open. Returns
 * 0, ZN_EINVAL (NULL), or ZN_ENOMEM (the old limits then stay). */
ZN_EXTERN int zn_conn_set_limits(zn_conn_t *c, const zn_conn_limits_t *l);

/*
 * Creates a connection over a connected, non-blocking socket `fd` and
 * starts it on `loop` (whose thread must be the caller's): on_connect runs
 * at once. For tools and tests that make their own sockets; servers and
 * clients call this for you. The connection owns the fd. Stores the
 * connection in *out (unreferenced: the loop holds it; take a reference to
 * keep it). Returns 0 or ZN_ENOMEM (the fd is then closed).
 */
ZN_EXTERN int zn_conn_adopt(zn_loop_t *loop, int fd,
                            const zn_handler_t *handler,
                            const zn_conn_limits_t *limits, zn_conn_t **out);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_CONN_H */
