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
#include "znet/workers.h"

typedef struct {
    uint32_t cmd;
    const ProtobufCMessageDescriptor *desc;
    zn_msg_handler_cb cb;
    void *ud;
    size_t budget;             /* decode budget; 0: the service's */
} zn__msg_entry_t;

#define ZN__MSG_MAX_HELD_DEFAULT ((size_t)64 << 20)

struct zn_msg_table_s {
    zn__msg_entry_t *v;        /* sorted by cmd */
    size_t n, cap;
    bool frozen;               /* given to a service: read-only */
    struct zn__msg_owned_s *owned; /* typed services' bindings (typed.c) */
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
    zn_work_t work;            /* links chains; runs it on a worker */
    zn_task_t task;            /* an abandonment carried to the loop */
    _Atomic int refs;          /* the handler phase + the answer */
    _Atomic int answered;
    bool deferred;
    uint32_t cmd, seq;
    uint8_t flags;
    size_t held;               /* bytes it counts in the service's held */
    zn__pb_alloc_t alloc;      /* the decoded message's memory */
    /* Where a small message is decoded: no allocation of its own. */
    _Alignas(max_align_t) unsigned char arena[256];
};

struct zn_msg_service_s {
    zn_msg_table_t *table;
    zn_msg_opts_t o;
    zn_handler_t handler;
    zn_workers_t *pool;        /* workers > 0 */
    _Atomic int shutting_down;
    _Atomic size_t held;       /* bytes of decoded requests alive */
    _Atomic size_t held_peak;
    uint8_t *reject;           /* OVERLOADED frame for refused conns */
    size_t reject_len;
    struct {
        _Atomic uint64_t requests, replies, errors_sent[6], oneway;
        _Atomic uint64_t bad_frames, too_large, deadline_closes;
        _Atomic uint64_t responses_dropped, late_replies, overloaded;
        _Atomic uint64_t in_flight, handoffs;
    } st;
};

/* Removes cmd's entry, if any (a registration taken back). */
void zn__msg_table_unregister(zn_msg_table_t *t, uint32_t cmd);

/* Frees what typed services left with the table (typed.c). */
void zn__msg_table_free_owned(zn_msg_table_t *t);

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


#define ZN__MSG_STAT_ADD(svc, field, n)                                       \
    atomic_fetch_add_explicit(&(svc)->st.field, (n), memory_order_relaxed)

#endif /* ZNET_MSG_INT_H */
