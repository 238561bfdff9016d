/*
 * Watches a prefix by polling a subscription, and picks an instance per
 * update with a round-robin balancer.
 *
 *   cc watcher_poll.c $(pkg-config --cflags --libs etcd_sd) -o watcher_poll
 *   ./watcher_poll 127.0.0.1:2379 /services/foosvc/ 30
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <etcd_sd.h>

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
  etcd_sd_subscription *sub = NULL;
  etcd_sd_balancer *balancer = NULL;
  etcd_sd_status st = etcd_sd_client_new(endpoints, 1, NULL, &client);
  if (st == ETCD_SD_OK) st = etcd_sd_instancer_new(client, argv[2], &instancer);
  if (st == ETCD_SD_OK) st = etcd_sd_instancer_subscribe(instancer, &sub);
  if (st == ETCD_SD_OK) st = etcd_sd_balancer_round_robin(instancer, &balancer);
  if (st != ETCD_SD_OK) {
    char msg[512];
    etcd_sd_last_error(msg, sizeof msg);
    fprintf(stderr, "error: %s (%s)\n", etcd_sd_status_str(st), msg);
    etcd_sd_balancer_free(balancer);
    etcd_sd_subscription_free(sub);
    etcd_sd_instancer_free(instancer);
    etcd_sd_client_free(client);
    return 1;
  }

  time_t end = time(NULL) + seconds;
  while (time(NULL) < end) {
    etcd_sd_event *ev = NULL;
    st = etcd_sd_subscription_recv(sub, 500, &ev); /* wait at most 500 ms */
    if (st == ETCD_SD_ERR_TIMEOUT) continue;
    if (st != ETCD_SD_OK) break; /* ETCD_SD_ERR_CLOSED: the instancer stopped */
    printf("%zu instance(s)", etcd_sd_event_len(ev));
    for (size_t i = 0; i < etcd_sd_event_len(ev); i++) printf(" %s", etcd_sd_event_instance(ev, i));
    if (etcd_sd_event_error(ev) != ETCD_SD_OK) printf(" (stale: etcd unreachable)");
    printf("\n");
    etcd_sd_event_free(ev);

    char pick[256];
    size_t len = 0;
    st = etcd_sd_balancer_next(balancer, pick, sizeof pick, &len);
    if (st == ETCD_SD_OK) printf("next call goes to %s\n", pick);
    else printf("no instance to call: %s\n", etcd_sd_status_str(st));
    fflush(stdout);
  }

  etcd_sd_balancer_free(balancer);
  etcd_sd_subscription_free(sub);
  etcd_sd_instancer_free(instancer);
  etcd_sd_client_free(client);
  return 0;
}
