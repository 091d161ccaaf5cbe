/*
 * msg_int.h: the message service's internals, shared by its files.
 */
#ifndef ZNET_MSG_INT_H
#define ZNET_MSG_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "internal.h"
#include "pbsafe.h"
#include "znet/msg.h"

typedef struct {
    uint32_t cmd;
    const ProtobufCMessageDescriptor *desc;
    zn_msg_handler_cb cb;
    void *ud;
} zn__msg_entry_t;

struct zn_msg_table_s {
    zn__msg_entry_t *v;        /* sorted by cmd */
    size_t n, cap;
    bool frozen;               /* given to a service: read-only */
};

/* The message layer's state of one connection (its user data). Loop
 * thread only. It outlives the connection's close while requests of it
 * are in flight. */
typedef struct {
    unsigned inflight;         /* requests received, not yet answered */
    bool eof;                  /* the peer shut down its write side */
    bool closed;               /* on_close ran */
    bool warned;               /* the bad-input WARN was logged */
    bool frame_open;           /* a partial frame is buffered */
} zn__msg_conn_t;

struct zn_msg_req_s {
    zn_msg_service_t *svc;
    zn_conn_t *conn;           /* a reference */
    zn__msg_conn_t *mc;
    const zn__msg_entry_t *ent;
    ProtobufCMessage *msg;
    struct zn_msg_req_s *next; /* worker queue */
    _Atomic int refs;          /* the handler phase + the answer */
    _Atomic int answered;
    bool deferred;
    uint32_t cmd, seq;
    uint8_t flags;
    zn__pb_alloc_t alloc;      /* the decoded message's memory */
    /* Where a small message is decoded: no allocation of its own. */
    _Alignas(max_align_t) unsigned char arena[256];
};

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    zn_msg_req_t *head, *tail;
    unsigned n, max;
} zn__msg_queue_t;

typedef struct {
    zn_msg_service_t *svc;
    zn__msg_queue_t *q;
    pthread_t th;
    bool started;
} zn__msg_worker_t;

struct zn_msg_service_s {
    zn_msg_table_t *table;
    zn_msg_opts_t o;
    zn_handler_t handler;
    zn__msg_worker_t *workers;
    zn__msg_queue_t *queues;   /* one, or one per worker (ordered) */
    unsigned nqueues;
    _Atomic int shutting_down;
    _Atomic int stopping;      /* workers exit */
    uint8_t *reject;           /* OVERLOADED frame for refused conns */
    size_t reject_len;
    struct {
        _Atomic uint64_t requests, replies, errors_sent[6], oneway;
        _Atomic uint64_t bad_frames, too_large, deadline_closes;
        _Atomic uint64_t responses_dropped, late_replies, overloaded;
        _Atomic uint64_t queued, in_flight, handoffs;
    } st;
};

/* The entry for cmd, or NULL. */
const zn__msg_entry_t *zn__msg_table_find(const zn_msg_table_t *t,
                                          uint32_t cmd);

/* Packs a frame into `out` (at least 16 + packed size bytes). Returns the
 * frame's size. */
size_t zn__msg_pack_into(uint8_t *out, uint32_t cmd, uint32_t seq,
                         uint8_t flags, const ProtobufCMessage *msg,
                         size_t body_len);

/* The packed size of a frame carrying msg (NULL: empty body), or 0 if the
 * body would not fit in a frame. */
size_t zn__msg_frame_size(const ProtobufCMessage *msg, size_t *body_len);

/* Runs a request's handler and lets go of its handler phase. */
void zn__msg_run(zn_msg_req_t *req);
void zn__msg_req_unref(zn_msg_req_t *req);
void zn__msg_answer_or_abandon(zn_msg_req_t *req, uint32_t code,
                               const char *text);

/* A worker brackets a batch of requests with these: answers made in
 * between go to their loops together when the batch ends. */
void zn__msg_collect_begin(void);
void zn__msg_collect_end(void);

/* Workers (workers.c). Enqueue takes a chain and returns what did not
 * fit (see there). */
int zn__msg_workers_start(zn_msg_service_t *svc);
void zn__msg_workers_stop(zn_msg_service_t *svc);
void zn__msg_workers_free(zn_msg_service_t *svc);
zn_msg_req_t *zn__msg_enqueue(zn_msg_service_t *svc, zn_msg_req_t *head,
                              int *why);
/* Which worker queue a connection's requests go to (0 unless ordered). */
unsigned zn__msg_queue_index(const zn_msg_service_t *svc, const zn_conn_t *c);

#define ZN__MSG_STAT_ADD(svc, field, n)                                       \
    atomic_fetch_add_explicit(&(svc)->st.field, (n), memory_order_relaxed)

#endif /* ZNET_MSG_INT_H */
