/* keys.h -- where nerve's data lives in Redis: the one definition of every
 * SKU key and stream name, and of a SKU's partition.
 *
 * A Lua script may only touch keys of one hash slot, and the commit script
 * touches a SKU's stock, price, lock and orders AND appends to the streams its
 * events go to. So a SKU's keys and those streams share one hash tag, the
 * SKU's partition: {pN}, N = FNV-1a 32-bit of the SKU's bytes mod the
 * partition count (bus.partitions). FNV-1a because anyone can recompute it
 * (a shell tool, a migration script) and it spreads short, similar SKUs well.
 *
 *   PREFIX{pN}:stock:SKU  PREFIX{pN}:price:SKU  PREFIX{pN}:lock:SKU
 *   PREFIX{pN}:order:SKU:ORDER_ID               (idempotency record)
 *   PREFIX{pN}:stream:CHANNEL                   (events of partition N)
 *   PREFIXstream:CHANNEL                        (ingest: external producers)
 *   PREFIXmeta:partitions                       (the count, set with the first data)
 *
 * The partition count is part of every key name, so changing it moves every
 * SKU: the count is recorded in Redis and a daemon started with another one
 * refuses to (keys_check_partitions), and `nerve keys migrate` moves them.
 *
 * A leaf: depends on rds.h for RDS_KEY_MAX only. Thread-safety: pure
 * functions, except keys_check_partitions (one Redis round trip on C).
 */
#ifndef NERVE_KEYS_H
#define NERVE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "nerve/rds.h"

#define KEYS_PARTITIONS_MAX 1024

/* FNV-1a 32-bit of S (LEN bytes). */
uint32_t keys_hash(const char *s, size_t len);

/* The partition of SKU among NPARTS (>= 1): 0..NPARTS-1. */
int keys_partition(const char *sku, int nparts);

/* Each writes a NUL-terminated key into BUF (RDS_KEY_MAX bytes) and returns
 * its length, or -1 (BUF empty) when it would not fit. */
int keys_sku(char *buf, const char *prefix, int nparts, const char *kind, const char *sku);
int keys_order(char *buf, const char *prefix, int nparts, const char *sku, const char *order_id);
int keys_stream(char *buf, const char *prefix, int part, const char *channel);
int keys_ingest(char *buf, const char *prefix, const char *channel);
int keys_meta_partitions(char *buf, const char *prefix);

/* The streams events of CHANNEL are read from: its NPARTS partition streams,
 * then its ingest stream (NPARTS + 1 of them). 0 with *OUT (malloc'd, free
 * with keys_streams_free) and *N set; -1 on OOM or a name too long. */
int keys_streams_of(const char *prefix, int nparts, const char *channel, char ***out, size_t *n);
void keys_streams_free(char **v, size_t n);

/* Record NPARTS under PREFIXmeta:partitions when no count is recorded yet
 * (SET NX), and compare: 0 when the recorded count is NPARTS; -1 with a
 * message naming both counts (or the Redis error) in ERR otherwise. */
int keys_check_partitions(rds_client *c, const char *prefix, int nparts, char *err, size_t errlen);

#endif
