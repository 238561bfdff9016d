/*
 * Watches a prefix and prints every change, from a callback.
 *
 *   cc watcher_callback.c $(pkg-config --cflags --libs etcd_sd) -o watcher_callback
 *   ./watcher_callback 127.0.0.1:2379 /services/foosvc/ 30
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <etcd_sd.h>

/* Runs on the library's dispatcher thread, one call at a time, in order. The
   event is lent for the duration of the call. */
static void on_update(const etcd_sd_event *ev, void *context) {
  const char *name = (const char *)context;
  if (etcd_sd_event_error(ev) != ETCD_SD_OK) {
    char msg[256];
    etcd_sd_last_error(msg, sizeof msg);
    printf("%s: discovery error (keeping the last good set): %s\n", name, msg);
  }
  printf("%s: %zu instance(s)", name, etcd_sd_event_len(ev));
  for (size_t i = 0; i < etcd_sd_event_len(ev); i++) printf(" %s", etcd_sd_event_instance(ev, i));
  printf("\n");
  fflush(stdout);
}

/* Runs exactly once, after the last call. */
static void on_drop(void *context) { printf("%s: callback released\n", (const char *)context); }

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s ENDPOINT PREFIX [SECONDS]\n", argv[0]);
    return 2;
  }
  const char *endpoints[1];
  endpoints[0] = argv[1];
  int seconds = argc > 3 ? atoi(argv[3]) : 30;

  etcd_sd_client *client = NULL;
  etcd_sd_instancer *instancer = NULL;
  etcd_sd_status st = etcd_sd_client_new(endpoints, 1, NULL, &client);
  if (st == ETCD_SD_OK) st = etcd_sd_instancer_new(client, argv[2], &instancer);
  if (st != ETCD_SD_OK) {
    char msg[512];
    etcd_sd_last_error(msg, sizeof msg);
    fprintf(stderr, "error: %s (%s)\n", etcd_sd_status_str(st), msg);
    etcd_sd_client_free(client);
    return 1;
  }

  uint64_t id = 0;
  static char name[] = "watcher";
  st = etcd_sd_instancer_on_update(instancer, on_update, on_drop, name, &id);
  if (st != ETCD_SD_OK) fprintf(stderr, "on_update: %s\n", etcd_sd_status_str(st));

  struct timespec ts;
  ts.tv_sec = seconds;
  ts.tv_nsec = 0;
  nanosleep(&ts, NULL);

  etcd_sd_instancer_free(instancer); /* removes the callback (on_drop runs) */
  etcd_sd_client_free(client);
  return 0;
}
