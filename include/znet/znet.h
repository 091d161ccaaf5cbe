/* znet/znet.h: includes every public header of znet's core. */
#ifndef ZNET_ZNET_H
#define ZNET_ZNET_H

#include "buf.h"
#include "client.h"
#include "common.h"
#include "conn.h"
#include "log.h"
#include "loop.h"
#include "pool.h"
#include "server.h"
#include "workers.h"

#endif /* ZNET_ZNET_H */
