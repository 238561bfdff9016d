/* Prints the library version and, given an endpoint, the values under "/". */
#include <stdio.h>

#include <etcd_sd.h>

int main(int argc, char **argv) {
  printf("etcd-sd %s (header %s)\n", etcd_sd_version(), ETCD_SD_VERSION);
  if (argc < 2) return 0;
  const char *endpoints[1];
  endpoints[0] = argv[1];
  etcd_sd_client *client = NULL;
  etcd_sd_strings *values = NULL;
  etcd_sd_status st = etcd_sd_client_new(endpoints, 1, NULL, &client);
  if (st == ETCD_SD_OK) st = etcd_sd_client_get_entries(client, argc > 2 ? argv[2] : "/", &values);
  if (st != ETCD_SD_OK) {
    char msg[512];
    etcd_sd_last_error(msg, sizeof msg);
    fprintf(stderr, "error: %s (%s)\n", etcd_sd_status_str(st), msg);
  } else {
    for (size_t i = 0; i < etcd_sd_strings_len(values); i++)
      printf("%s\n", etcd_sd_strings_get(values, i));
  }
  etcd_sd_strings_free(values);
  etcd_sd_client_free(client);
  return st == ETCD_SD_OK ? 0 : 1;
}
