/*
 * typed.c: typed services (znet/service.h). A generated service's methods
 * become entries of the command table, one binding each; on the client a
 * ProtobufCService whose invoke turns a typed call into zn_rpc_call().
 */
#include <stdio.h>
#include <string.h>

#include "msg_int.h"
#include "znet/log.h"
#include "znet/service.h"

uint32_t
zn_method_id(const char *full_name)
{
    uint32_t h = 2166136261u;
    const unsigned char *p = (const unsigned char *)full_name;

    for (; *p != '\0'; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h | ZN_METHOD_ID_BIT;
}


uint32_t
zn_service_method_id(const ProtobufCServiceDescriptor *d, unsigned index)
{
    uint32_t h = 2166136261u;
    const unsigned char *p;

    if (d == NULL || index >= d->n_methods)
        return 0;
    /* the same hash over d->name "." method name, without a buffer */
    for (p = (const unsigned char *)d->name; *p != '\0'; p++)
        h = (h ^ *p) * 16777619u;
    h = (h ^ '.') * 16777619u;
    for (p = (const unsigned char *)d->methods[index].name; *p != '\0'; p++)
        h = (h ^ *p) * 16777619u;
    return h | ZN_METHOD_ID_BIT;
}


static bool
zn__service_desc_ok(const ProtobufCServiceDescriptor *d)
{
    return d != NULL && d->magic == PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC &&
           d->name != NULL && (d->n_methods == 0 || d->methods != NULL);
}


static uint32_t
zn__method_cmd(const ProtobufCServiceDescriptor *d, const uint32_t *ids,
               unsigned i)
{
    return ids != NULL && ids[i] != 0 ? ids[i] : zn_service_method_id(d, i);
}

/* ---- server ----------------------------------------------------------- */

/* What a table entry of a method carries: its service and its index. */
typedef struct {
    ProtobufCService *impl;
    unsigned index;
} zn__method_binding_t;

/* The bindings of one service, owned by the table. */
struct zn__msg_owned_s {
    struct zn__msg_owned_s *next;
    zn__method_binding_t b[];
};


static void
zn__method_closure(const ProtobufCMessage *rsp, void *closure_data)
{
    zn_msg_req_t *req = closure_data;
    const zn__method_binding_t *b = req->ent->ud;
    const ProtobufCMethodDescriptor *m =
        &b->impl->descriptor->methods[b->index];

    if (rsp == NULL) {
        (void)zn_msg_reply_error(req, ZN_CODE_INTERNAL, "method failed");
    } else if (rsp->descriptor != m->output) {
        ZN_LOG_RL(ZN_LOG_ERROR, 10,
                  "%s.%s answered a %s, not a %s", b->impl->descriptor->name,
                  m->name, rsp->descriptor->name, m->output->name);
        (void)zn_msg_reply_error(req, ZN_CODE_INTERNAL, "wrong answer type");
    } else {
        (void)zn_msg_reply(req, rsp);
    }
}


/* The handler of every method: the typed call through the service. */
static void
zn__method_handler(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const zn__method_binding_t *b = ud;

    b->impl->invoke(b->impl, b->index, msg, zn__method_closure, req);
}


int
zn_msg_table_add_service(zn_msg_table_t *t, ProtobufCService *impl,
                         const uint32_t *ids)
{
    const ProtobufCServiceDescriptor *d;
    struct zn__msg_owned_s *own;
    unsigned i, j;
    uint32_t cmd;
    int rc = 0;

    if (t == NULL || impl == NULL || t->frozen ||
        !zn__service_desc_ok(d = impl->descriptor) || impl->invoke == NULL)
        return ZN_EINVAL;
    for (i = 0; i < d->n_methods; i++) { /* refuse before changing anything */
        cmd = zn__method_cmd(d, ids, i);
        if (d->methods[i].input == NULL || d->methods[i].output == NULL)
            return ZN_EINVAL;
        if (zn__msg_table_find(t, cmd) != NULL)
            return ZN_EEXIST;
        for (j = 0; j < i; j++)
            if (zn__method_cmd(d, ids, j) == cmd)
                return ZN_EEXIST;
    }
    own = zn__malloc(sizeof(*own) + d->n_methods * sizeof(own->b[0]));
    if (own == NULL)
        return ZN_ENOMEM;
    for (i = 0; i < d->n_methods; i++) {
        own->b[i] = (zn__method_binding_t){impl, i};
        rc = zn_msg_table_register(t, zn__method_cmd(d, ids, i),
                                   d->methods[i].input, zn__method_handler,
                                   &own->b[i]);
        if (rc != 0)
            break;
    }
    if (rc != 0) { /* out of memory half-way: take back the ones before */
        while (i > 0)
            zn__msg_table_unregister(t, zn__method_cmd(d, ids, --i));
        zn__free(own);
        return rc;
    }
    own->next = t->owned;
    t->owned = own;
    return 0;
}

void
zn__msg_table_free_owned(zn_msg_table_t *t)
{
    struct zn__msg_owned_s *o, *next;

    for (o = t->owned; o != NULL; o = next) {
        next = o->next;
        zn__free(o);
    }
    t->owned = NULL;
}

/* ---- client ----------------------------------------------------------- */

typedef struct {
    ProtobufCService base;
    zn_rpc_t *r;
    uint32_t *ids;             /* one per method */
} zn__stub_t;


static void
zn__stub_done(int status, const ProtobufCMessage *rsp,
              const zn_rpc_error_t *err, void *ud)
{
    zn_call_t *call = ud;

    call->status = status;
    call->code = 0;
    call->message[0] = '\0';
    if (status == ZN_EPROTO && err != NULL) {
        call->code = err->code;
        snprintf(call->message, sizeof(call->message), "%s",
                 err->message != NULL ? err->message : "");
    }
    call->closure_(status == 0 ? rsp : NULL, call);
}


static void
zn__stub_invoke(ProtobufCService *service, unsigned index,
                const ProtobufCMessage *input, ProtobufCClosure closure,
                void *closure_data)
{
    zn__stub_t *s = (zn__stub_t *)service;
    zn_call_t *call = closure_data;
    int rc;

    call->closure_ = closure;
    if (index >= service->descriptor->n_methods ||
        input->descriptor != service->descriptor->methods[index].input)
        rc = ZN_EINVAL;
    else
        rc = zn_rpc_call(s->r, s->ids[index], input,
                         service->descriptor->methods[index].output,
                         call->timeout_ms, zn__stub_done, call);
    if (rc != 0)
        zn__stub_done(rc, NULL, NULL, call);
}


static void
zn__stub_destroy(ProtobufCService *service)
{
    zn__stub_t *s = (zn__stub_t *)service;

    zn__free(s->ids);
    zn__free(s);
}


int
zn_rpc_service_new(zn_rpc_t *r, const ProtobufCServiceDescriptor *d,
                   const uint32_t *ids, ProtobufCService **out)
{
    zn__stub_t *s;
    unsigned i;

    if (r == NULL || out == NULL || !zn__service_desc_ok(d))
        return ZN_EINVAL;
    if ((s = zn__calloc(1, sizeof(*s))) == NULL ||
        (s->ids = zn__calloc(d->n_methods + 1, sizeof(*s->ids))) == NULL) {
        zn__free(s);
        return ZN_ENOMEM;
    }
    s->base.descriptor = d;
    s->base.invoke = zn__stub_invoke;
    s->base.destroy = zn__stub_destroy;
    s->r = r;
    for (i = 0; i < d->n_methods; i++)
        s->ids[i] = zn__method_cmd(d, ids, i);
    *out = &s->base;
    return 0;
}


void
zn_rpc_service_free(ProtobufCService *s)
{
    if (s != NULL)
        s->destroy(s);
}


int
zn_rpc_service_call_sync(ProtobufCService *service, const char *method,
                         const ProtobufCMessage *req,
                         ProtobufCMessage **rsp_out, zn_call_t *call)
{
    zn__stub_t *s = (zn__stub_t *)service;
    const ProtobufCMethodDescriptor *m;
    int rc;

    if (service == NULL || service->invoke != zn__stub_invoke ||
        method == NULL || req == NULL || rsp_out == NULL || call == NULL)
        return ZN_EINVAL;
    call->code = 0;
    call->message[0] = '\0';
    m = protobuf_c_service_descriptor_get_method_by_name(service->descriptor,
                                                         method);
    if (m == NULL)
        rc = ZN_ENOENT;
    else if (req->descriptor != m->input)
        rc = ZN_EINVAL;
    else
        rc = zn_rpc_call_sync(s->r,
                              s->ids[m - service->descriptor->methods], req,
                              m->output, call->timeout_ms, rsp_out,
                              &call->code, call->message,
                              sizeof(call->message));
    call->status = rc;
    return rc;
}
