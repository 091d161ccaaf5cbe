/*
 * transport_socket.c: the plain socket transport. Reads with recv() or
 * readv(), writes with send() or sendmsg() and MSG_NOSIGNAL (writev() has
 * no flags and would raise SIGPIPE on a reset connection).
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn_int.h"
#include "transport.h"


static ssize_t
zn__sock_readv(zn_conn_t *c, const struct iovec *iov, int iovcnt)
{
    ssize_t n;

    do /* recv() for one piece: the kernel then copies no iovec */
        n = iovcnt == 1 ? recv(c->io.fd, iov->iov_base, iov->iov_len, 0)
                        : readv(c->io.fd, iov, iovcnt);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? ZN_EAGAIN : -errno;
    return n;
}


/* send() for one piece: the kernel then copies no msghdr or iovec. */
static ssize_t
zn__sock_writev(zn_conn_t *c, const struct iovec *iov, int iovcnt)
{
    struct msghdr m;
    ssize_t n;

    if (iovcnt > 1) {
        memset(&m, 0, sizeof(m));
        m.msg_iov = (struct iovec *)iov;
        m.msg_iovlen = (size_t)iovcnt;
    }
    do
        n = iovcnt == 1 ? send(c->io.fd, iov->iov_base, iov->iov_len,
                               MSG_NOSIGNAL | MSG_DONTWAIT)
                        : sendmsg(c->io.fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? ZN_EAGAIN : -errno;
    return n;
}


static void
zn__sock_shutdown(zn_conn_t *c)
{
    (void)shutdown(c->io.fd, SHUT_WR);
}


/* An abortive close sets SO_LINGER to 0 first: close() then sends a reset
 * and drops what the kernel still holds. */
static void
zn__sock_close(zn_conn_t *c, bool abortive)
{
    struct linger lg = {1, 0};

    if (abortive)
        (void)setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    zn__close_fd(c->io.fd);
}


const zn__transport_t zn__transport_socket = {
    "socket",          zn__sock_readv, zn__sock_writev,
    zn__sock_shutdown, zn__sock_close, NULL,
};
