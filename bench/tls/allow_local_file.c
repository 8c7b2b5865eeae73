/* LD_PRELOAD shim for fio's nbd engine, which connects with nbd_connect_uri
 * but never calls nbd_set_uri_allow_local_file, so libnbd refuses the
 * tls-certificates= and tls-psk-file= parameters that nbds:// URIs need.
 * This allows them, then calls the real function. Built by bench/tls/compare. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libnbd.h>

int nbd_connect_uri(struct nbd_handle *h, const char *uri) {
  static int (*real)(struct nbd_handle *, const char *);
  if (!real) real = (int (*)(struct nbd_handle *, const char *))dlsym(RTLD_NEXT, "nbd_connect_uri");
  nbd_set_uri_allow_local_file(h, true);
  return real(h, uri);
}
