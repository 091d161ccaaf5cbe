/*
 * peer_epoll_echo: the plainest epoll echo server there is, the ceiling that
 * every framework is measured against.
 *
 * One thread, level-triggered epoll, one read and one write per event from
 * a stack buffer. Per connection it keeps nothing at all unless a write is
 * cut short; then the rest is copied aside and reading from that peer stops
 * until it has been written.
 *
 * usage: peer_epoll_echo --port P   (binds 127.0.0.1; SIGINT/SIGTERM: exit 0)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256

/* Output that a short write left behind, indexed by fd. */
struct pending {
    size_t off;
    size_t len;
    unsigned char data[];
};

static struct pending **pending;
static size_t npending;


static void
fail(const char *what)
{
    fprintf(stderr, "peer_epoll_echo: %s: %s\n", what, strerror(errno));
    exit(1);
}


static int
parse_port(int argc, char **argv)
{
    char *end;
    long port;

    if (argc != 3 || strcmp(argv[1], "--port") != 0) {
        fprintf(stderr, "usage: %s --port P\n", argv[0]);
        exit(2);
    }
    port = strtol(argv[2], &end, 10);
    if (*end || port < 1 || port > 65535) {
        fprintf(stderr, "%s: bad port '%s'\n", argv[0], argv[2]);
        exit(2);
    }
    return (int)port;
}


static int
listen_on(int port)
{
    struct sockaddr_in sa;
    int fd, one = 1;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        fail("bind");
    if (listen(fd, SOMAXCONN) != 0)
        fail("listen");
    return fd;
}


/* SIGINT and SIGTERM arrive as readable data on a descriptor in the same
 * epoll, so stopping needs no flag and no race. */
static int
signal_fd(void)
{
    sigset_t set;
    int fd;

    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        fail("signalfd");
    return fd;
}


static void
watch(int epfd, int op, int fd, unsigned events)
{
    struct epoll_event ev;

    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(epfd, op, fd, &ev) != 0)
        fail("epoll_ctl");
}


/* Closing removes the fd from epoll too: nothing else holds a duplicate. */
static void
close_conn(int fd)
{
    if ((size_t)fd < npending) {
        free(pending[fd]);
        pending[fd] = NULL;
    }
    close(fd);
}


/* Accepts until the queue is empty. On EMFILE it reports and returns; the
 * listener stays readable, which a benchmark never reaches in practice. */
static void
accept_all(int epfd, int lfd)
{
    int fd, one = 1;

    for (;;) {
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                fprintf(stderr, "peer_epoll_echo: accept: %s\n",
                        strerror(errno));
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        watch(epfd, EPOLL_CTL_ADD, fd, EPOLLIN);
    }
}


/* Keeps what a short write left; the table grows with the largest fd. */
static void
keep(int fd, const unsigned char *p, size_t len)
{
    struct pending *pd;
    size_t n;

    if ((size_t)fd >= npending) {
        n = (size_t)fd * 2 + 64;
        pending = realloc(pending, n * sizeof(*pending));
        if (pending == NULL)
            fail("realloc");
        memset(pending + npending, 0, (n - npending) * sizeof(*pending));
        npending = n;
    }
    pd = malloc(sizeof(*pd) + len);
    if (pd == NULL)
        fail("malloc");
    pd->off = 0;
    pd->len = len;
    memcpy(pd->data, p, len);
    pending[fd] = pd;
}


/* Writes what a short write left; reading resumes once it is all out. */
static void
drain(int epfd, int fd)
{
    struct pending *pd = pending[fd];
    ssize_t n;

    n = send(fd, pd->data + pd->off, pd->len - pd->off, MSG_NOSIGNAL);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n < 0) {
        close_conn(fd);
        return;
    }
    pd->off += (size_t)n;
    if (pd->off == pd->len) {
        free(pd);
        pending[fd] = NULL;
        watch(epfd, EPOLL_CTL_MOD, fd, EPOLLIN);
    }
}


/* One read, one write. A short write parks the rest and switches the
 * connection from reading to writing, so one peer can never make the
 * server buffer more than one read's worth. */
static void
echo(int epfd, int fd)
{
    unsigned char buf[BUF_SIZE];
    ssize_t n, w;

    n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        close_conn(fd);
        return;
    }
    w = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (w < 0 && errno == EAGAIN)
        w = 0;
    if (w < 0) {
        close_conn(fd);
        return;
    }
    if (w < n) {
        keep(fd, buf + w, (size_t)(n - w));
        watch(epfd, EPOLL_CTL_MOD, fd, EPOLLOUT);
    }
}


int
main(int argc, char **argv)
{
    struct epoll_event ev[MAX_EVENTS];
    int port = parse_port(argc, argv);
    int lfd = listen_on(port), sfd = signal_fd(), epfd, n, i, fd;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        fail("epoll_create1");
    watch(epfd, EPOLL_CTL_ADD, lfd, EPOLLIN);
    watch(epfd, EPOLL_CTL_ADD, sfd, EPOLLIN);
    for (;;) {
        n = epoll_wait(epfd, ev, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR)
            fail("epoll_wait");
        for (i = 0; i < n; i++) {
            fd = ev[i].data.fd;
            if (fd == sfd)
                return 0;
            if (fd == lfd)
                accept_all(epfd, lfd);
            else if ((size_t)fd < npending && pending[fd])
                drain(epfd, fd);
            else
                echo(epfd, fd);
        }
    }
}
