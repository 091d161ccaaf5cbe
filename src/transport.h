/*
 * transport.h: how a connection moves its bytes. conn.c keeps the
 * buffers, the handler calls, back-pressure and the close; a transport
 * reads, writes, shuts down and closes the connection's descriptor. The
 * plain socket (transport_socket.c) is the first; TLS is a second file
 * that fills the same table. A group of connections (a server's, a
 * client's) shares one transport.
 */
#ifndef ZNET_TRANSPORT_H
#define ZNET_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "znet/conn.h"

typedef struct zn__transport_s {
    const char *name;

    /* Reads into the pieces of iov, in order. Returns the bytes read
     * (> 0), 0 at the end of the stream, ZN_EAGAIN, or a negative error.
     * EINTR is retried. */
    ssize_t (*readv)(zn_conn_t *c, const struct iovec *iov, int iovcnt);

    /* Writes the pieces of iov, in order, as far as the transport takes
     * them now. Returns the bytes taken (may be fewer than given),
     * ZN_EAGAIN, or a negative error; never raises SIGPIPE. */
    ssize_t (*writev)(zn_conn_t *c, const struct iovec *iov, int iovcnt);

    /* Shuts the write side down; called once the output queue is empty
     * (TLS sends its close_notify here). */
    void (*shutdown)(zn_conn_t *c);

    /* Closes the descriptor (abortive: so that the peer sees a reset)
     * and releases the transport's state. */
    void (*close)(zn_conn_t *c, bool abortive);

    /* The io events to wait for when the connection wants `want`
     * (ZN_EV_READABLE to read, ZN_EV_WRITABLE to write). A transport with a
     * protocol of its own may need the other direction (TLS: a read that
     * waits for a handshake write). NULL: `want` itself. A connection
     * whose transport has this then tries to read and to write on any
     * event. */
    unsigned (*events)(zn_conn_t *c, unsigned want);
} zn__transport_t;

extern const zn__transport_t zn__transport_socket;

#endif /* ZNET_TRANSPORT_H */
