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

/*
 * What protobuf-c 1.4's unpacker allocates, which the scan adds up (see
 * docs/protocol.md, "The decode bound"): per message, its struct, a
 * bitmap when the type has over 128 fields, slabs of 32-byte records
 * for the fields on the wire past the first 16 (each slab twice the
 * last), one array per repeated field present, one array of 24-byte
 * records for unknown fields and a copy of each, a copy of each string
 * (length + 1) and of each non-empty bytes field; then its sub-messages.
 * Every allocation is charged its size plus PB_HDR_SIZE, as pb_alloc()
 * charges it.
 */
#define PB_SCANNED_MEMBER_SIZE (sizeof(void *) == 8 ? 32u : 24u)
#define PB_FIRST_SLAB 16u
#define PB_UNKNOWN_SIZE (sizeof(ProtobufCMessageUnknownField))
#define PB_BITMAP_STACK_FIELDS 128u

/* One open message in the scanner: its type, its bytes, and what its
 * fields on the wire will cost when it closes. */
typedef struct {
    const ProtobufCMessageDescriptor *desc;
    const uint8_t *start, *end;
    size_t members;     /* fields on the wire */
    size_t unknown;     /* of them, not in desc */
    size_t rep_occ;     /* occurrences of repeated fields */
    unsigned nrep;      /* repeated fields desc has */
    uint64_t seen;      /* singular message fields seen (index < 64) */
} pb_level_t;

/* The scan's running sum; saturates rather than wrap. */
typedef struct {
    size_t total;
} pb_cost_t;


static void
pb_add(pb_cost_t *c, size_t n)
{
    c->total = n > SIZE_MAX - c->total ? SIZE_MAX : c->total + n;
}


/* One allocation of n bytes, as pb_alloc() charges it. */
static void
pb_add_alloc(pb_cost_t *c, size_t n)
{
    pb_add(c, n > SIZE_MAX - PB_HDR_SIZE ? SIZE_MAX : n + PB_HDR_SIZE);
}


size_t
zn__pb_default_budget(size_t len)
{
    if (len > SIZE_MAX - ZN__PB_BUDGET_BASE)
        return SIZE_MAX;
    return len + ZN__PB_BUDGET_BASE;
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


/* The size of one element of a repeated field's array in protobuf-c. */
static size_t
pb_elt_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4;
    }
}


static bool
pb_is_len_type(ProtobufCType t)
{
    return t == PROTOBUF_C_TYPE_STRING || t == PROTOBUF_C_TYPE_BYTES ||
           t == PROTOBUF_C_TYPE_MESSAGE;
}


/* The elements of a packed field of n bytes at p, counted as protobuf-c
 * counts them; ZN_EPROTO where it would refuse them. */
static int
pb_packed_count(ProtobufCType t, const uint8_t *p, size_t n, size_t *count)
{
    size_t i, k = 0;

    switch (t) {
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        *count = n / 4;
        return n % 4 == 0 ? 0 : ZN_EPROTO;
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        *count = n / 8;
        return n % 8 == 0 ? 0 : ZN_EPROTO;
    case PROTOBUF_C_TYPE_BOOL:
        *count = n;
        return 0;
    default: /* varints: one per byte without the continuation bit */
        for (i = 0; i < n; i++)
            k += (p[i] & 0x80) == 0;
        *count = k;
        return 0;
    }
}


/* Opens a message of type d: its struct and bitmap now, the rest when it
 * closes. */
static void
pb_open(pb_level_t *lv, const ProtobufCMessageDescriptor *d,
        const uint8_t *start, const uint8_t *end, pb_cost_t *c)
{
    unsigned i;

    *lv = (pb_level_t){.desc = d, .start = start, .end = end};
    for (i = 0; i < d->n_fields; i++)
        lv->nrep += d->fields[i].label == PROTOBUF_C_LABEL_REPEATED;
    pb_add_alloc(c, d->sizeof_message);
    if (d->n_fields > PB_BITMAP_STACK_FIELDS)
        pb_add_alloc(c, (d->n_fields + 7) / 8);
}


/* Closes it: the scan slabs, the unknown-field array, one array header
 * per repeated field present (their elements were added as they came). */
static void
pb_close(const pb_level_t *lv, pb_cost_t *c)
{
    size_t cap = PB_FIRST_SLAB, slab = PB_FIRST_SLAB;

    while (cap < lv->members) {
        slab *= 2;
        cap += slab;
        pb_add_alloc(c, slab * PB_SCANNED_MEMBER_SIZE);
    }
    if (lv->unknown > 0)
        pb_add_alloc(c, lv->unknown * PB_UNKNOWN_SIZE);
    pb_add(c, PB_HDR_SIZE * (lv->rep_occ < lv->nrep ? lv->rep_occ
                                                     : lv->nrep));
}


/* True if the field numbered `id` appears among lv's fields before `at`:
 * the duplicate check for singular message fields past index 63. */
static bool
pb_seen_before(const pb_level_t *lv, uint32_t id, const uint8_t *at)
{
    const uint8_t *p = lv->start;
    uint64_t key, n;

    while (p < at && pb_read_varint(&p, at, &key) == 0) {
        if ((key >> 3) == id)
            return true;
        n = (key & 7) == PB_WT_64BIT ? 8 : (key & 7) == PB_WT_32BIT ? 4 : 0;
        if ((key & 7) == PB_WT_VARINT && pb_read_varint(&p, at, &n) == 0)
            continue;
        if ((key & 7) == PB_WT_LEN && pb_read_varint(&p, at, &n) != 0)
            return false;
        p += n;
    }
    return false;
}


/*
 * A singular message field given twice is merged by protobuf-c, which
 * copies the repeated fields of the earlier into a new array each time:
 * quadratic in the number of times. No encoder writes one message that
 * way (only concatenation does), so it is refused.
 */
static int
pb_check_singular(pb_level_t *lv, const ProtobufCFieldDescriptor *f,
                  const uint8_t *field_start)
{
    size_t idx = (size_t)(f - lv->desc->fields);

    if (idx < 64) {
        if (lv->seen & (UINT64_C(1) << idx))
            return ZN_EEXIST;
        lv->seen |= UINT64_C(1) << idx;
        return 0;
    }
    return pb_seen_before(lv, f->id, field_start) ? ZN_EEXIST : 0;
}


/* The cost of a known field's value (n bytes at p, wire type wt) that is
 * not a message. */
static int
pb_value_cost(pb_level_t *lv, const ProtobufCFieldDescriptor *f,
              unsigned wt, const uint8_t *p, uint64_t n, pb_cost_t *c)
{
    size_t count;
    int rc;

    if (pb_is_len_type(f->type) && wt != PB_WT_LEN)
        return ZN_EPROTO; /* protobuf-c refuses it */
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        lv->rep_occ++;
        if (wt == PB_WT_LEN && !pb_is_len_type(f->type)) {
            if ((rc = pb_packed_count(f->type, p, (size_t)n, &count)) != 0)
                return rc;
            pb_add(c, count * pb_elt_size(f->type));
            return 0;
        }
        pb_add(c, pb_elt_size(f->type));
    }
    if (f->type == PROTOBUF_C_TYPE_STRING)
        pb_add_alloc(c, (size_t)n + 1);
    else if (f->type == PROTOBUF_C_TYPE_BYTES && n > 0)
        pb_add_alloc(c, (size_t)n);
    return 0;
}


/*
 * Reads one field of the message lv and adds what decoding it costs. If
 * it is a message, returns 1 with the child's bounds in child_start and
 * child_end and its type in *child_desc, so that the caller opens it;
 * *pp is left at the next field, or at the child's first byte.
 */
static int
pb_scan_field(const uint8_t **pp, pb_level_t *lv, pb_cost_t *c,
              const ProtobufCMessageDescriptor **child_desc,
              const uint8_t **child_end)
{
    const uint8_t *start = *pp, *value;
    const ProtobufCFieldDescriptor *f;
    uint64_t key, n = 0;
    int rc;

    if (pb_read_varint(pp, lv->end, &key) != 0)
        return ZN_EPROTO;
    if ((key >> 3) == 0 || (key >> 3) > UINT32_MAX)
        return ZN_EPROTO;
    value = *pp;
    switch (key & 7) {
    case PB_WT_VARINT:
        if (pb_read_varint(pp, lv->end, &n) != 0)
            return ZN_EPROTO;
        n = 0;
        break;
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
    lv->members++;
    f = protobuf_c_message_descriptor_get_field(lv->desc,
                                                (unsigned)(key >> 3));
    if (f == NULL) { /* kept whole: a record and a copy of the field */
        lv->unknown++;
        pb_add_alloc(c, (size_t)(*pp + n - value));
        *pp += n;
        return 0;
    }
    if (f->type == PROTOBUF_C_TYPE_MESSAGE && (key & 7) == PB_WT_LEN) {
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            lv->rep_occ++;
            pb_add(c, sizeof(void *));
        } else if ((rc = pb_check_singular(lv, f, start)) != 0) {
            return rc;
        }
        *child_desc = f->descriptor;
        *child_end = *pp + n;
        return 1;
    }
    rc = pb_value_cost(lv, f, (unsigned)(key & 7), *pp, n, c);
    *pp += n;
    return rc;
}


/*
 * One linear pass over the bytes: a nested message's bytes lie inside its
 * parent's, so descending is just continuing with a new end on a stack,
 * and a message is closed when the position reaches its end. The stack
 * lives on the C stack and is bounded by ZN__PB_DEPTH_MAX.
 */
int
zn__pb_scan(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
            size_t len, unsigned max_depth, size_t *bound)
{
    pb_level_t stack[ZN__PB_DEPTH_MAX];
    const ProtobufCMessageDescriptor *cd;
    pb_cost_t c = {0};
    const uint8_t *p = data, *ce;
    unsigned top = 0;
    int rc;

    if (desc == NULL || (data == NULL && len > 0) || max_depth == 0 ||
        max_depth > ZN__PB_DEPTH_MAX)
        return ZN_EINVAL;
    pb_open(&stack[0], desc, data, data + len, &c);
    for (;;) {
        while (p == stack[top].end) {
            pb_close(&stack[top], &c);
            if (top == 0) {
                if (bound != NULL)
                    *bound = c.total;
                return 0;
            }
            top--;
        }
        rc = pb_scan_field(&p, &stack[top], &c, &cd, &ce);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            if (top + 1 >= max_depth)
                return ZN_ERANGE;
            top++;
            pb_open(&stack[top], cd, p, ce, &c);
        }
    }
}


int
zn__pb_scan_depth(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                  size_t len, unsigned max_depth)
{
    return zn__pb_scan(desc, data, len, max_depth, NULL);
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
 * A bound without the scan, for a type that cannot nest: every field on
 * the wire takes w >= 2 bytes and costs at most 28 w (an unknown field:
 * its copy, header and record, w + 40; a string or bytes field w + 33
 * with its pointer; a packed varint 8 bytes per byte; an array header per
 * field), plus the struct, the bitmap and the slabs of L / 2 fields. Most
 * small requests fit under their budget this way and skip the scan.
 */
static size_t
pb_crude_bound(const ProtobufCMessageDescriptor *desc, size_t len)
{
    pb_level_t lv = {.desc = desc, .members = len / 2};
    pb_cost_t c = {0};

    pb_add_alloc(&c, desc->sizeof_message);
    if (desc->n_fields > PB_BITMAP_STACK_FIELDS)
        pb_add_alloc(&c, (desc->n_fields + 7) / 8);
    pb_close(&lv, &c);
    pb_add(&c, len > SIZE_MAX / 28 ? SIZE_MAX : 28 * len);
    pb_add(&c, PB_HDR_SIZE);
    return c.total;
}


int
zn__pb_bound(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
             size_t len, unsigned max_depth, size_t budget, size_t *bound)
{
    int rc;

    if (desc == NULL || bound == NULL || (data == NULL && len > 0))
        return ZN_EINVAL;
    if (!pb_can_nest(desc)) {
        *bound = pb_crude_bound(desc, len);
        if (*bound <= budget)
            return 0;
    }
    if ((rc = zn__pb_scan(desc, data, len, max_depth, bound)) != 0)
        return rc;
    return *bound <= budget ? 0 : ZN_ENOBUFS;
}


int
zn__pb_unpack_bounded(const ProtobufCMessageDescriptor *desc,
                      const uint8_t *data, size_t len, size_t bound,
                      const zn__pb_opts_t *opts, ProtobufCMessage **msg,
                      zn__pb_alloc_t *a)
{
    static const uint8_t empty[1];
    ProtobufCMessage *m;

    *msg = NULL;
    zn__pb_alloc_init(a, bound);
    if (opts != NULL && opts->arena != NULL) {
        a->arena = opts->arena;
        a->arena_len = opts->arena_len;
    }
    m = protobuf_c_message_unpack(desc, &a->pa, len, len ? data : empty);
    if (m != NULL && !a->over_budget && !a->oom) {
        *msg = m;
        return 0;
    }
    /* Defensive: a success despite a refused allocation is not trusted
     * (the bound is meant never to refuse one). */
    zn__pb_free(m, a);
    if (a->over_budget)
        return ZN_ENOBUFS;
    return a->oom ? ZN_ENOMEM : ZN_EPROTO;
}


/*
 * Scan first: protobuf-c must never see a body that nests too deep, since
 * its recursion is what overflows, nor one whose decoding would pass the
 * budget, since the memory is gone once taken. Then unpack with the bound
 * as the allocator's budget. protobuf-c reports every failure as NULL; the
 * allocator's flags tell a refused allocation (the peer's fault, or ours
 * if the system is out of memory) from malformed data.
 */
int
zn__pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
              size_t len, const zn__pb_opts_t *opts, ProtobufCMessage **msg,
              zn__pb_alloc_t *a)
{
    unsigned depth = ZN__PB_DEPTH_DEFAULT;
    size_t bound, budget = zn__pb_default_budget(len);
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
    zn__pb_alloc_init(a, 0);
    if ((rc = zn__pb_bound(desc, data, len, depth, budget, &bound)) != 0)
        return rc;
    return zn__pb_unpack_bounded(desc, data, len, bound, opts, msg, a);
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
    case ZN_EEXIST:
        return "singular message field repeated";
    case ZN_ENOMEM:
        return "out of memory";
    default:
        return zn_strerror(err);
    }
}
