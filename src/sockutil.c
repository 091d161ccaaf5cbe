/*
 * sockutil.c: address parsing and socket set-up.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"
#include "sockutil.h"


static int
zn__sock_parse_unix(const char *path, struct sockaddr_storage *ss,
                    socklen_t *len)
{
    struct sockaddr_un *un = (struct sockaddr_un *)ss;
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof(un->sun_path))
        return ZN_EINVAL;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n + 1);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}


int
zn__sock_parse(const char *host, uint16_t port, struct sockaddr_storage *ss,
               socklen_t *len)
{
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    char buf[INET6_ADDRSTRLEN + 2];
    size_t n;

    memset(ss, 0, sizeof(*ss));
    if (host == NULL)
        host = "0.0.0.0";
    if (strncmp(host, "unix:", 5) == 0)
        return zn__sock_parse_unix(host + 5, ss, len);
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        *len = sizeof(*in4);
        return 0;
    }
    n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof(buf)) {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        host = buf;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        *len = sizeof(*in6);
        return 0;
    }
    return ZN_EINVAL;
}


int
zn__sock_listen(const struct sockaddr_storage *ss, socklen_t len,
                int backlog, bool reuseport)
{
    int fd, one = 1, rc;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (ss->ss_family != AF_UNIX) {
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ss->ss_family == AF_INET6)
            (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (reuseport &&
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
            goto fail;
    }
    if (bind(fd, (const struct sockaddr *)ss, len) < 0 ||
        listen(fd, backlog) < 0)
        goto fail;
    return fd;

fail:
    rc = -errno;
    zn__close_fd(fd);
    return rc;
}


int
zn__sock_connect(const struct sockaddr_storage *ss, socklen_t len,
                 bool *in_progress)
{
    int fd, rc;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    *in_progress = false;
    if (connect(fd, (const struct sockaddr *)ss, len) == 0)
        return fd;
    if (errno == EINPROGRESS || errno == EAGAIN) {
        /* EAGAIN: a Unix socket whose backlog is full; wait like TCP. */
        *in_progress = true;
        return fd;
    }
    rc = -errno;
    zn__close_fd(fd);
    return rc;
}


void
zn__sock_nodelay(int fd)
{
    int one = 1;

    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}


uint16_t
zn__sock_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}
