/*
 * The C side of tests/naming_go.rs: etcd_sd_naming_encode / _decode against
 * etcd 3.4's Go naming packages (tests/go/naming_peer).
 *
 *   naming_go register ENDPOINT KEY ADDR METADATA|-   registers the encoded
 *       endpoint, prints "registered VALUE", deregisters when stdin closes
 *   naming_go list ENDPOINT PREFIX   one line per value: "ADDR<TAB>METADATA"
 *       (METADATA "-" when none), or "plain<TAB>VALUE" for other values
 */
#include <stdio.h>
#include <string.h>

#include "etcd_sd.h"

static int fail(const char *what, etcd_sd_status s) {
  char text[512];
  etcd_sd_last_error(text, sizeof text);
  fprintf(stderr, "naming_go: %s: %s (%s)\n", what, etcd_sd_status_str(s), text);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: naming_go register|list ENDPOINT ...\n");
    return 2;
  }
  const char *eps[1];
  eps[0] = argv[2];
  etcd_sd_client *c = NULL;
  etcd_sd_status s = etcd_sd_client_new(eps, 1, NULL, &c);
  if (s != ETCD_SD_OK) return fail("connect", s);
  int rc = 0;
  if (strcmp(argv[1], "register") == 0 && argc == 6) {
    char *value = NULL;
    s = etcd_sd_naming_encode(argv[4], strcmp(argv[5], "-") == 0 ? NULL : argv[5], &value);
    if (s != ETCD_SD_OK) {
      etcd_sd_client_free(c);
      return fail("encode", s);
    }
    etcd_sd_registrar *r = NULL;
    s = etcd_sd_registrar_new(c, argv[3], value, 1000, 3000, &r);
    if (s == ETCD_SD_OK) s = etcd_sd_registrar_register(r);
    if (s != ETCD_SD_OK) {
      rc = fail("register", s);
    } else {
      printf("registered %s\n", value);
      fflush(stdout);
      char line[64];
      while (fgets(line, sizeof line, stdin)) {
      }
      s = etcd_sd_registrar_deregister(r);
      if (s != ETCD_SD_OK) rc = fail("deregister", s);
      printf("deregistered\n");
    }
    etcd_sd_registrar_free(r);
    etcd_sd_string_free(value);
  } else if (strcmp(argv[1], "list") == 0) {
    etcd_sd_strings *values = NULL;
    s = etcd_sd_client_get_entries(c, argv[3], &values);
    if (s != ETCD_SD_OK) {
      rc = fail("list", s);
    }
    for (size_t i = 0; i < etcd_sd_strings_len(values); i++) {
      const char *v = etcd_sd_strings_get(values, i);
      char *addr = NULL, *metadata = NULL;
      if (etcd_sd_naming_decode(v, &addr, &metadata) == ETCD_SD_OK) {
        printf("%s\t%s\n", addr, metadata ? metadata : "-");
      } else {
        printf("plain\t%s\n", v);
      }
      etcd_sd_string_free(addr);
      etcd_sd_string_free(metadata);
    }
    etcd_sd_strings_free(values);
  } else {
    fprintf(stderr, "naming_go: bad arguments\n");
    rc = 2;
  }
  etcd_sd_client_free(c);
  return rc;
}
