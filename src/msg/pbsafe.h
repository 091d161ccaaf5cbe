/*
 * pbsafe.h: decoding untrusted protobuf bodies with protobuf-c, safely.
 * Private to znet: the dispatcher and the RPC client decode every body
 * through it, and users set its limits through the message layer's options.
 *
 * protobuf-c alone is not safe on hostile input:
 *  - it recurses once per nesting level with no limit, so a self-nesting
 *    message 10,000 levels deep (about 40 KB) overflows the stack;
 *  - it can allocate 20 to 45 times the body size (every field occurrence
 *    costs a 32-byte scan record, every tiny sub-message a struct and a
 *    pointer), and merging repeated occurrences of a singular message field
 *    copies its repeated fields each time: quadratic work.
 *
 * zn__pb_unpack() therefore first walks the wire format iteratively,
 * guided by the message descriptor, refuses nesting deeper than a limit,
 * and adds up what protobuf-c will allocate for this body and this type
 * (docs/protocol.md, "The decode bound"): the message structs, the scan
 * records of every field on the wire, every repeated field's array, the
 * unknown fields and their copies, every string and bytes copy. A body
 * whose bound passes the budget is refused before anything is allocated;
 * one that passes is unpacked with the bound as its allocator's budget,
 * which it never reaches (tests/msg/test_pbsafe.c checks the bound against
 * protobuf-c's real allocations). A singular message field given twice is
 * refused as malformed: protobuf-c would merge the two, copying repeated
 * fields each time (quadratic), and no encoder writes one message so.
 * A type that cannot nest skips the scan when a cruder bound (28 bytes
 * per body byte plus its struct) already fits the budget.
 *
 * Depth: the top-level message is level 1, a message field inside it is
 * level 2, and so on; the default limit of 64 accepts 64 levels.
 *
 * Budget: by default the body's size plus 64 KiB, charging each
 * allocation its size plus a 16-byte header, so that the input and the
 * decoded message together stay near twice the body (strings and bytes
 * cost about 1x their size). Types made of long lists of small elements
 * (many short strings: about 7x; packed small 64-bit numbers: 8x; empty
 * sub-messages: their struct per two bytes) need a larger budget, which
 * the message layer's options give per service and per command.
 *
 * Arena: the caller may give memory to allocate from first (the
 * dispatcher gives each request 256 bytes), so that a small message costs
 * no allocation; it is charged to the budget all the same.
 *
 * Thread-safety: all functions are reentrant; a zn__pb_alloc_t belongs to
 * one decoding at a time (it may move to another thread with the message).
 */
#ifndef ZNET_MSG_PBSAFE_H
#define ZNET_MSG_PBSAFE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "znet/common.h"

#define ZN__PB_DEPTH_DEFAULT 64u
#define ZN__PB_DEPTH_MAX 256u  /* the scanner's stack holds this many */
#define ZN__PB_BUDGET_BASE ((size_t)64 * 1024)

/* Limits for one decoding. Zero fields take the defaults. */
typedef struct zn__pb_opts_s {
    unsigned max_depth;  /* 0: ZN__PB_DEPTH_DEFAULT; at most ..._DEPTH_MAX */
    size_t budget;       /* bytes; 0: zn__pb_default_budget(body length) */
    /* Optional memory to allocate from before zn__malloc(): aligned as
     * malloc's, owned by the caller, untouched by zn__pb_free(), and it
     * must outlive the message. A small message then costs no allocation
     * (the dispatcher gives each request one). NULL: none. */
    void *arena;
    size_t arena_len;
} zn__pb_opts_t;

/*
 * A budgeted allocator and its counters. Give &a->pa to protobuf-c; its
 * allocator_data points back at a, so a must stay at the same address
 * until the message decoded with it is freed.
 */
typedef struct zn__pb_alloc_s {
    ProtobufCAllocator pa;
    size_t budget;       /* bytes that may be charged in all */
    size_t charged;      /* bytes charged so far; never decreases */
    size_t live;         /* bytes allocated and not yet freed */
    size_t peak;         /* the most bytes live at once */
    size_t nallocs;      /* allocations made (arena ones included) */
    size_t nlive;        /* allocations not yet freed */
    unsigned char *arena;/* see zn__pb_opts_t */
    size_t arena_len;
    size_t arena_used;
    bool over_budget;    /* an allocation was refused for the budget */
    bool oom;            /* zn__malloc() itself failed */
} zn__pb_alloc_t;

/*
 * The default budget for a body of len bytes: len + 64 KiB, saturating at
 * SIZE_MAX.
 */
size_t zn__pb_default_budget(size_t len);

/*
 * Sets a up as an allocator that charges each allocation (its size plus a
 * 16-byte header) to budget bytes and allocates through zn__malloc().
 * Counters start at zero.
 */
void zn__pb_alloc_init(zn__pb_alloc_t *a, size_t budget);

/*
 * Walks the protobuf wire data (len bytes, data may be NULL if len is 0) as
 * a message of type desc, descending only into length-delimited fields that
 * desc declares as messages, without recursion and without allocating.
 * Returns 0 if the nesting is at most max_depth levels (1 to
 * ZN__PB_DEPTH_MAX) and the wire data is well formed as far as nesting
 * goes; ZN_ERANGE if it nests deeper; ZN_EPROTO if the data is malformed
 * (truncated varint or field, length past its end, field number 0, group or
 * unknown wire type); ZN_EINVAL for a bad max_depth. Does not validate
 * field contents (UTF-8, enum values): protobuf-c does that.
 */
int zn__pb_scan_depth(const ProtobufCMessageDescriptor *desc,
                      const uint8_t *data, size_t len, unsigned max_depth);

/*
 * The same walk, adding up what protobuf-c will allocate (charged as
 * pb_alloc charges it) into *bound (if not NULL). Returns as
 * zn__pb_scan_depth(), and also ZN_EPROTO for a field whose wire type
 * protobuf-c refuses for its type or a packed field of the wrong length,
 * and ZN_EEXIST for a singular message field given twice (which
 * protobuf-c would merge).
 */
int zn__pb_scan(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                size_t len, unsigned max_depth, size_t *bound);

/*
 * The bound of decoding this body, within `budget`: from the scan, or for
 * a type that cannot nest from a cruder bound when that fits already.
 * Returns 0 with *bound <= budget; ZN_ENOBUFS (*bound is then over the
 * budget), or an error of zn__pb_scan().
 */
int zn__pb_bound(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                 size_t len, unsigned max_depth, size_t budget,
                 size_t *bound);

/*
 * Unpacks a body whose bound is known (zn__pb_bound), with the bound as
 * the allocator's budget; opts gives the arena only. Returns as
 * zn__pb_unpack().
 */
int zn__pb_unpack_bounded(const ProtobufCMessageDescriptor *desc,
                          const uint8_t *data, size_t len, size_t bound,
                          const zn__pb_opts_t *opts, ProtobufCMessage **msg,
                          zn__pb_alloc_t *a);

/*
 * Decodes len bytes at data (may be NULL if len is 0; an empty body is the
 * default message) as a message of type desc, under the limits of opts
 * (NULL: defaults). a is initialized here; on success *msg is the message,
 * owned by the caller, to be released with zn__pb_free(*msg, a), and a must
 * not move until then. On error *msg is NULL and nothing stays allocated.
 *
 * Returns 0, or:
 *   ZN_EPROTO   the body is malformed or not of type desc
 *   ZN_ERANGE   nested deeper than opts->max_depth
 *   ZN_ENOBUFS  decoding would allocate more than the budget (refused
 *               before anything is allocated)
 *   ZN_EEXIST   a singular message field given twice
 *   ZN_ENOMEM   the system allocator failed (not the peer's fault)
 *   ZN_EINVAL   bad arguments (desc or msg NULL, data NULL with len > 0,
 *               max_depth over ZN__PB_DEPTH_MAX)
 * The dispatcher answers BAD_REQUEST to EPROTO, ERANGE, EEXIST and
 * ENOBUFS.
 */
int zn__pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                  size_t len, const zn__pb_opts_t *opts,
                  ProtobufCMessage **msg, zn__pb_alloc_t *a);

/* Frees a message from zn__pb_unpack() with its allocator. msg may be NULL. */
void zn__pb_free(ProtobufCMessage *msg, zn__pb_alloc_t *a);

/* "malformed", "too deep", "over budget", ...: for log lines and counters. */
const char *zn__pb_err_reason(int err);

#endif /* ZNET_MSG_PBSAFE_H */
