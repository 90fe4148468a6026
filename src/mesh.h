/* mesh: a worker's links to the other workers (workers.h), for topics. A
 * publish is delivered in its own worker by pubsub.c and sent once to
 * every other worker, which delivers it to its own subscribers as if
 * published there (framed and compressed once in each worker). Each link
 * is one SOCK_SEQPACKET socket pair, a FIFO, so the messages of one
 * publisher arrive in the order it published them. Sending never blocks:
 * what a link cannot take now waits in the sender's queue for that peer,
 * bounded (MESH_QUEUE_MAX); past the bound a message is dropped for that
 * peer and the drops are logged with their count. It owns the links'
 * descriptors and watchers and runs no Lua. The same links carry each
 * worker's word on its reloads to worker 1 (mesh_note_reload). */
#ifndef MOONPORT_MESH_H
#define MOONPORT_MESH_H

#include <stddef.h>
#include <stdint.h>

struct server;
struct mesh;

/* Bytes a worker holds for one peer that does not read, at most. */
#define MESH_QUEUE_MAX (64u << 20)

/* peers: s->nworkers descriptors, this worker's end of the link to each
 * worker, -1 for itself; the mesh owns them from now. NULL when out of
 * memory. */
struct mesh *mesh_new(struct server *s, const int *peers);
void mesh_free(struct mesh *m);

/* Send a published message (topic of 1 to TOPIC_NAME_MAX bytes, opcode
 * text or binary) to every other worker. */
void mesh_publish(struct mesh *m, const char *topic, size_t tlen, uint8_t opcode,
                  const void *data, size_t dlen);

/* Tell worker (1..N, not this one) how this worker's reload of the app
 * name went (reload.c counts them in worker 1). */
void mesh_note_reload(struct mesh *m, unsigned worker, const char *name, size_t len, int ok);

#endif
