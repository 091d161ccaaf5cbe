/*
 * app.h: what the pieces of znet-test-server share (tests/server).
 *
 * main.c parses the flags and runs the server; commands.c holds the
 * request handlers (the demo's cmd 1 and 2, and the test commands 3 to 5);
 * stats.c writes the JSON line of counters that --stats-fd asks for.
 */
#ifndef ZNET_TEST_SERVER_APP_H
#define ZNET_TEST_SERVER_APP_H

#include <stdbool.h>
#include <stdint.h>

#include "znet/msg.h"
#include "znet/znet.h"

/* What main, the signal handler and the stats writer share. */
typedef struct {
    zn_server_opts_t so;
    zn_msg_opts_t mo;
    zn_server_t *srv;
    zn_msg_service_t *svc;
    const char *log_conf, *log_level, *port_file;
    int stats_fd;          /* -1: no stats */
    unsigned max_fds;      /* 0: leave RLIMIT_NOFILE alone */
    bool test_commands;
    uint64_t stats_seq;    /* lines written so far */
} app_t;

/* Registers cmd 1 and 2 (the demo's), and with `test_commands` cmd 3, 4
 * and 5. Returns 0 or the error of zn_msg_table_register(). */
int app_register_commands(zn_msg_table_t *t, bool test_commands);

/* Writes one line of JSON with every counter to app->stats_fd, if set. */
void app_write_stats(app_t *app);

#endif
