/*
 * Registers one service instance in etcd, keeps it alive for a while, then
 * deregisters it.
 *
 *   cc registrar.c $(pkg-config --cflags --libs etcd_sd) -o registrar
 *   ./registrar 127.0.0.1:2379 /services/foosvc/10.0.0.1:8080 http://10.0.0.1:8080 30
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <etcd_sd.h>

static int fail(const char *what, etcd_sd_status status) {
  char msg[512];
  etcd_sd_last_error(msg, sizeof msg);
  fprintf(stderr, "%s: %s (%s)\n", what, etcd_sd_status_str(status), msg);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s ENDPOINT KEY VALUE [SECONDS]\n", argv[0]);
    return 2;
  }
  const char *endpoints[1];
  endpoints[0] = argv[1];
  int seconds = argc > 4 ? atoi(argv[4]) : 30;

  etcd_sd_client *client = NULL;
  etcd_sd_status st = etcd_sd_client_new(endpoints, 1, NULL, &client);
  if (st != ETCD_SD_OK) return fail("connect", st);

  /* Heartbeat 1 s, ttl 5 s: etcd forgets us 5 s after we die. */
  etcd_sd_registrar *registrar = NULL;
  st = etcd_sd_registrar_new(client, argv[2], argv[3], 1000, 5000, &registrar);
  if (st != ETCD_SD_OK) {
    etcd_sd_client_free(client);
    return fail("registrar", st);
  }
  /* The registrar holds its own reference: the client can go now. */
  etcd_sd_client_free(client);

  st = etcd_sd_registrar_register(registrar);
  if (st != ETCD_SD_OK) {
    /* It keeps retrying in the background; we just report and go on. */
    fail("register (still retrying)", st);
  } else {
    printf("registered %s=%s with lease %lld\n", argv[2], argv[3],
           (long long)etcd_sd_registrar_lease_id(registrar));
  }
  fflush(stdout);

  struct timespec ts;
  ts.tv_sec = seconds;
  ts.tv_nsec = 0;
  nanosleep(&ts, NULL);

  etcd_sd_registrar_free(registrar); /* deregisters: the key goes at once */
  printf("deregistered\n");
  return 0;
}
