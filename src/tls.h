/* tls: everything moonport does with OpenSSL. It builds the server's
 * SSL_CTX from a PEM certificate chain and key, makes one SSL object per
 * connection, and wraps SSL_read, SSL_write and SSL_shutdown so that the
 * connection code sees a few plain results instead of OpenSSL's error
 * queue. It never touches a socket other than through OpenSSL, never
 * blocks, and knows nothing of WebSocket.
 *
 * struct ssl_ctx_st and struct ssl_st are OpenSSL's SSL_CTX and SSL; the
 * rest of moonport holds them only as opaque pointers. */
#ifndef MOONPORT_TLS_H
#define MOONPORT_TLS_H

#include <stddef.h>

struct ssl_ctx_st;
struct ssl_st;

/* What a read, write or shutdown came to, when it did not move bytes. */
enum {
    TLS_WANT_READ = -1,  /* wait until the socket is readable, then call again */
    TLS_WANT_WRITE = -2, /* wait until the socket is writable, then call again */
    TLS_CLOSED = -3,     /* the peer closed (close_notify, EOF or a reset): no more I/O */
    TLS_ERROR = -4,      /* the connection is broken: tls_error() says why */
};

/* A server context from a certificate chain file and a private key file
 * (PEM). NULL with err set ("cannot load ...: reason") if either cannot be
 * loaded or the key does not match the certificate. */
struct ssl_ctx_st *tls_ctx_new(const char *cert_file, const char *key_file, char *err,
                               size_t errlen);

/* Let go of the server's reference: connections made from it keep their
 * own, so it is safe to call while they are open. NULL is a no-op. */
void tls_ctx_free(struct ssl_ctx_st *ctx);

/* A server-side TLS connection on the non-blocking socket fd; its
 * handshake happens inside the first tls_read calls. NULL if out of memory. */
struct ssl_st *tls_new(struct ssl_ctx_st *ctx, int fd);
void tls_free(struct ssl_st *ssl);

/* Read decrypted bytes: > 0 bytes read, or TLS_WANT_READ, TLS_WANT_WRITE,
 * TLS_CLOSED, TLS_ERROR. */
long tls_read(struct ssl_st *ssl, void *buf, size_t len);

/* Write len > 0 bytes: > 0 bytes written (perhaps fewer than len, one
 * record's worth), or TLS_WANT_READ, TLS_WANT_WRITE, TLS_CLOSED, TLS_ERROR. After a
 * TLS_WANT_*, call it again with the same bytes (at least as many; the
 * buffer may have moved). */
long tls_write(struct ssl_st *ssl, const void *buf, size_t len);

/* Send close_notify: 0 once it is sent, or TLS_WANT_WRITE (call again when
 * the socket is writable), or TLS_ERROR. It does not wait for the peer's. */
int tls_shutdown(struct ssl_st *ssl);

/* 1 if OpenSSL holds input already taken from the socket and not yet read:
 * the socket will not become readable for it. */
int tls_pending(struct ssl_st *ssl);

/* 1 once the TLS handshake is complete. */
int tls_handshake_done(struct ssl_st *ssl);

/* Why the last call on this thread failed, for a log line: OpenSSL's
 * reason, or the system error. Valid until the next tls_ call. */
const char *tls_error(void);

#endif
