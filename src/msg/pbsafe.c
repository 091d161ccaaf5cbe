/*
 * pbsafe.c: depth pre-scan and budgeted allocation around protobuf-c's
 * unpacker (see pbsafe.h for why both are needed).
 */
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "msg/pbsafe.h"

/*
 * Each allocation is preceded by a header holding its size, so free can
 * refund the live count. Its size keeps the user part aligned as malloc's.
 */
#define PB_HDR_SIZE alignof(max_align_t)

/* Wire types of the protobuf encoding. */
enum {
    PB_WT_VARINT = 0,
    PB_WT_64BIT = 1,
    PB_WT_LEN = 2,
    PB_WT_32BIT = 5
};

#define PB_VARINT_MAX 10  /* bytes in the longest (64-bit) varint */

/* One open message in the scanner: its type and where its bytes end. */
typedef struct {
    const ProtobufCMessageDescriptor *desc;
    const uint8_t *end;
} pb_level_t;


size_t
zn__pb_default_budget(size_t len)
{
    if (len > (SIZE_MAX - ZN__PB_BUDGET_BASE) / ZN__PB_BUDGET_FACTOR)
        return SIZE_MAX;
    return len * ZN__PB_BUDGET_FACTOR + ZN__PB_BUDGET_BASE;
}


/*
 * Charges before allocating, so a refused allocation costs nothing and
 * charged never exceeds budget. charged <= budget always holds, so the
 * subtraction cannot wrap.
 */
static void *
pb_alloc(void *data, size_t size)
{
    zn__pb_alloc_t *a = data;
    size_t room = a->budget - a->charged;
    size_t slot; /* size with header, rounded up to keep the alignment */
    unsigned char *p;

    if (room < PB_HDR_SIZE || size > room - PB_HDR_SIZE) {
        a->over_budget = true;
        return NULL;
    }
    /* From the arena when it fits (the budget check above bounds size, so
     * the sum cannot wrap). */
    slot = (size + 2 * PB_HDR_SIZE - 1) / PB_HDR_SIZE * PB_HDR_SIZE;
    if (a->arena != NULL && slot <= a->arena_len - a->arena_used) {
        p = a->arena + a->arena_used;
        a->arena_used += slot;
    } else {
        p = zn__malloc(size + PB_HDR_SIZE);
    }
    if (p == NULL) {
        a->oom = true;
        return NULL;
    }
    *(size_t *)(void *)p = size;
    a->charged += size + PB_HDR_SIZE;
    a->live += size + PB_HDR_SIZE;
    if (a->live > a->peak)
        a->peak = a->live;
    a->nallocs++;
    a->nlive++;
    return p + PB_HDR_SIZE;
}


static void
pb_free(void *data, void *ptr)
{
    zn__pb_alloc_t *a = data;
    unsigned char *p;

    if (ptr == NULL)
        return;
    p = (unsigned char *)ptr - PB_HDR_SIZE;
    a->live -= *(size_t *)(void *)p + PB_HDR_SIZE;
    a->nlive--;
    if (a->arena != NULL && p >= a->arena && p < a->arena + a->arena_len)
        return; /* the arena's memory is its owner's */
    zn__free(p);
}


void
zn__pb_alloc_init(zn__pb_alloc_t *a, size_t budget)
{
    *a = (zn__pb_alloc_t){
        .pa = {.alloc = pb_alloc, .free = pb_free, .allocator_data = a},
        .budget = budget,
    };
}


/* Reads a varint of at most 10 bytes that must end before end. */
static int
pb_read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
    const uint8_t *p = *pp;
    uint64_t v = 0;
    unsigned i;

    for (i = 0; i < PB_VARINT_MAX && p < end; i++, p++) {
        v |= (uint64_t)(*p & 0x7F) << (7 * i);
        if ((*p & 0x80) == 0) {
            *pp = p + 1;
            *out = v;
            return 0;
        }
    }
    return ZN_EPROTO;
}


/*
 * Skips one field of the message lv, or, if it is a length-delimited field
 * that lv's descriptor declares as a message, returns 1 with the child's
 * type and end so that the caller descends into it. *pp is left at the
 * next field, or at the child's first byte.
 */
static int
pb_scan_field(const uint8_t **pp, const pb_level_t *lv, pb_level_t *child)
{
    const ProtobufCFieldDescriptor *f;
    uint64_t key, n;

    if (pb_read_varint(pp, lv->end, &key) != 0)
        return ZN_EPROTO;
    if ((key >> 3) == 0 || (key >> 3) > UINT32_MAX)
        return ZN_EPROTO;
    switch (key & 7) {
    case PB_WT_VARINT:
        return pb_read_varint(pp, lv->end, &n);
    case PB_WT_64BIT:
    case PB_WT_32BIT:
        n = (key & 7) == PB_WT_64BIT ? 8 : 4;
        break;
    case PB_WT_LEN:
        if (pb_read_varint(pp, lv->end, &n) != 0)
            return ZN_EPROTO;
        break;
    default:
        return ZN_EPROTO;  /* groups: protobuf-c refuses them too */
    }
    if (n > (uint64_t)(lv->end - *pp))
        return ZN_EPROTO;
    if ((key & 7) == PB_WT_LEN) {
        f = protobuf_c_message_descriptor_get_field(lv->desc,
                                                    (unsigned)(key >> 3));
        if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) {
            child->desc = f->descriptor;
            child->end = *pp + n;
            return 1;
        }
    }
    *pp += n;
    return 0;
}


/*
 * One linear pass over the bytes: a nested message's bytes lie inside its
 * parent's, so descending is just continuing with a new end on a stack,
 * and a message is closed when the position reaches its end. The stack
 * lives on the C stack and is bounded by ZN__PB_DEPTH_MAX.
 */
int
zn__pb_scan_depth(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                  size_t len, unsigned max_depth)
{
    pb_level_t stack[ZN__PB_DEPTH_MAX];
    pb_level_t child;
    unsigned top = 0;
    const uint8_t *p = data;
    int rc;

    if (desc == NULL || (data == NULL && len > 0) || max_depth == 0 ||
        max_depth > ZN__PB_DEPTH_MAX)
        return ZN_EINVAL;
    if (len == 0)
        return 0;
    stack[0] = (pb_level_t){desc, data + len};
    for (;;) {
        while (p == stack[top].end) {
            if (top == 0)
                return 0;
            top--;
        }
        rc = pb_scan_field(&p, &stack[top], &child);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            if (top + 1 >= max_depth)
                return ZN_ERANGE;
            stack[++top] = child;
        }
    }
}


/* True if a message of this type can contain another message: only then
 * can a body nest, and need the depth scan. */
static bool
pb_can_nest(const ProtobufCMessageDescriptor *desc)
{
    unsigned i;

    for (i = 0; i < desc->n_fields; i++)
        if (desc->fields[i].type == PROTOBUF_C_TYPE_MESSAGE)
            return true;
    return false;
}


/*
 * Scan first: protobuf-c must never see a body that nests too deep, since
 * its recursion is what overflows. Then unpack with the budget. protobuf-c
 * reports every failure as NULL; the allocator's flags tell a refused
 * allocation (the peer's fault, or ours if the system is out of memory)
 * from malformed data.
 */
int
zn__pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
              size_t len, const zn__pb_opts_t *opts, ProtobufCMessage **msg,
              zn__pb_alloc_t *a)
{
    static const uint8_t empty[1];
    unsigned depth = ZN__PB_DEPTH_DEFAULT;
    size_t budget = zn__pb_default_budget(len);
    ProtobufCMessage *m;
    int rc;

    if (msg == NULL || a == NULL)
        return ZN_EINVAL;
    *msg = NULL;
    if (opts != NULL && opts->max_depth != 0)
        depth = opts->max_depth;
    if (desc == NULL || (data == NULL && len > 0) || depth < 1 ||
        depth > ZN__PB_DEPTH_MAX)
        return ZN_EINVAL;
    if (opts != NULL && opts->budget != 0)
        budget = opts->budget;
    zn__pb_alloc_init(a, budget);
    if (opts != NULL && opts->arena != NULL) {
        a->arena = opts->arena;
        a->arena_len = opts->arena_len;
    }
    /* A type without message fields is one level deep whatever the body
     * holds (protobuf-c skips unknown fields without recursing); it still
     * refuses a malformed body itself. */
    rc = pb_can_nest(desc) ? zn__pb_scan_depth(desc, data, len, depth) : 0;
    if (rc != 0)
        return rc;
    m = protobuf_c_message_unpack(desc, &a->pa, len, len ? data : empty);
    if (m != NULL && !a->over_budget && !a->oom) {
        *msg = m;
        return 0;
    }
    /* Defensive: a success despite a refused allocation is not trusted. */
    zn__pb_free(m, a);
    if (a->over_budget)
        return ZN_ENOBUFS;
    return a->oom ? ZN_ENOMEM : ZN_EPROTO;
}


void
zn__pb_free(ProtobufCMessage *msg, zn__pb_alloc_t *a)
{
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, &a->pa);
}


const char *
zn__pb_err_reason(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case ZN_EPROTO:
        return "malformed";
    case ZN_ERANGE:
        return "too deep";
    case ZN_ENOBUFS:
        return "over budget";
    case ZN_ENOMEM:
        return "out of memory";
    default:
        return zn_strerror(err);
    }
}
