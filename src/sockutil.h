/*
 * sockutil.h: address parsing and socket set-up shared by server and client.
 */
#ifndef ZNET_SOCKUTIL_H
#define ZNET_SOCKUTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/*
 * Parses "1.2.3.4", "::1", "[::1]" (with `port`) or "unix:/path" into `ss`.
 * NULL host means "0.0.0.0". Returns 0 or ZN_EINVAL.
 */
int zn__sock_parse(const char *host, uint16_t port,
                   struct sockaddr_storage *ss, socklen_t *len);

/* A non-blocking, close-on-exec listening socket. Returns the fd or a
 * negative error. */
int zn__sock_listen(const struct sockaddr_storage *ss, socklen_t len,
                    int backlog, bool reuseport);

/* Starts a non-blocking connect. Returns the fd (connected or in
 * progress: *in_progress tells) or a negative error. */
int zn__sock_connect(const struct sockaddr_storage *ss, socklen_t len,
                     bool *in_progress);

/* Sets TCP_NODELAY (TCP sockets only). */
void zn__sock_nodelay(int fd);

/* The local port of a bound socket, 0 for Unix sockets. */
uint16_t zn__sock_port(int fd);

#endif /* ZNET_SOCKUTIL_H */
