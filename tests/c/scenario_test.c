/*
 * C API scenarios that need the test driver (tests/c_api.rs) to act on etcd:
 *
 *   scenario_test outage   etcd is killed and restarted in the middle: every
 *                          blocking call returns ETCD_SD_ERR_UNAVAILABLE or
 *                          ETCD_SD_ERR_TIMEOUT within its bound, subscribers
 *                          get an event with that error and the last good
 *                          instances, then a fresh event once etcd is back.
 *   scenario_test snapshot an instancer with a snapshot file writes it; with
 *                          etcd killed, a new one starts from the file (the
 *                          first event has the file's instances and an
 *                          unreachable error), then gets etcd's state once
 *                          it is restarted.
 *   scenario_test auth     etcd has authentication enabled: a wrong password
 *                          is ETCD_SD_ERR_AUTH, the right one works.
 *   scenario_test sigpipe  a C host keeps SIGPIPE's default action (terminate);
 *                          SIGPIPE raised on the library's runtime thread (as a
 *                          write to a socket etcd reset raises it) must not
 *                          kill the host.
 *
 * Protocol: the program prints "WAIT <what>" and reads one line from stdin
 * once the driver has done <what>. Environment: ETCD_SD_TEST_ENDPOINT,
 * ETCD_SD_TEST_PREFIX, and for auth ETCD_SD_TEST_USER / ETCD_SD_TEST_PASSWORD.
 * Prints "N passed, N failed" at the end.
 */
#define _GNU_SOURCE /* syscall(SYS_tgkill, ...) */
#include "test_util.h"

#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *g_endpoint;
static const char *g_prefix;

static void wait_for_driver(const char *what) {
  char line[64];
  printf("WAIT %s\n", what);
  fflush(stdout);
  if (!fgets(line, sizeof line, stdin)) {
    fprintf(stderr, "driver went away\n");
    exit(3);
  }
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int unreachable(etcd_sd_status s) {
  return s == ETCD_SD_ERR_UNAVAILABLE || s == ETCD_SD_ERR_TIMEOUT;
}

/* Receives until an event whose error status satisfies `want_error` (1: an
   error, 0: no error) and whose size is `want_len`; returns it (NULL when
   none came within `timeout_ms`). */
static etcd_sd_event *recv_until(etcd_sd_subscription *s, int want_error, size_t want_len,
                                 long timeout_ms) {
  long long deadline = now_ms() + timeout_ms;
  for (int n = 0; n < 1000 && now_ms() < deadline; n++) {
    etcd_sd_event *ev = NULL;
    etcd_sd_status st = etcd_sd_subscription_recv(s, 500, &ev);
    if (st == ETCD_SD_ERR_TIMEOUT) continue;
    if (st != ETCD_SD_OK) return NULL;
    int has_error = etcd_sd_event_error(ev) != ETCD_SD_OK;
    if (has_error == want_error && etcd_sd_event_len(ev) == want_len) return ev;
    etcd_sd_event_free(ev);
  }
  return NULL;
}

static void test_outage(void) {
  const char *eps[1];
  eps[0] = g_endpoint;
  etcd_sd_client_options o;
  etcd_sd_client_options_init(&o);
  o.dial_timeout_ms = 1500;
  o.dial_keep_alive_ms = 1000;
  o.request_timeout_ms = 1500;
  etcd_sd_client *c = NULL;
  CHECK_OK(etcd_sd_client_new(eps, 1, &o, &c));

  char key1[200], key2[200];
  snprintf(key1, sizeof key1, "%sone", g_prefix);
  snprintf(key2, sizeof key2, "%stwo", g_prefix);
  etcd_sd_registrar *r1 = NULL, *r2 = NULL;
  CHECK_OK(etcd_sd_registrar_new(c, key1, "one", 500, 20000, &r1));
  CHECK_OK(etcd_sd_registrar_register(r1));
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, g_prefix, &i));
  etcd_sd_subscription *sub = NULL;
  CHECK_OK(etcd_sd_instancer_subscribe(i, &sub));
  etcd_sd_event *ev = recv_until(sub, 0, 1, 5000);
  CHECK(ev != NULL);
  etcd_sd_event_free(ev);
  counter k;
  counter_init(&k);
  uint64_t id = 0;
  CHECK_OK(etcd_sd_instancer_on_update(i, on_event, on_drop, &k, &id));
  CHECK(wait_count(&k, &k.calls, 1, 5000));

  wait_for_driver("kill");

  /* The watcher reports the outage once, keeping the last good set. */
  ev = recv_until(sub, 1, 1, 30000);
  CHECK(ev != NULL);
  etcd_sd_status st = etcd_sd_event_error(ev);
  CHECK(unreachable(st));
  CHECK(strcmp(etcd_sd_event_instance(ev, 0), "one") == 0);
  CHECK(etcd_sd_last_error(NULL, 0) > 0);
  etcd_sd_event_free(ev);
  CHECK(wait_count(&k, &k.calls, 2, 10000));
  CHECK(unreachable(counter_get(&k, &k.last_error_status)));

  /* Every blocking call fails within its bound. */
  long long t0 = now_ms();
  etcd_sd_strings *s = (etcd_sd_strings *)1;
  st = etcd_sd_client_get_entries(c, g_prefix, &s);
  CHECK(unreachable(st));
  CHECK(s == NULL);
  CHECK_OK(etcd_sd_registrar_new(c, key2, "two", 500, 20000, &r2));
  st = etcd_sd_registrar_register(r2); /* keeps retrying afterwards */
  CHECK(unreachable(st));
  etcd_sd_instancer *i2 = (etcd_sd_instancer *)1;
  st = etcd_sd_instancer_new(c, g_prefix, &i2);
  CHECK(unreachable(st));
  CHECK(i2 == NULL);
  etcd_sd_client *c2 = (etcd_sd_client *)1;
  st = etcd_sd_client_new(eps, 1, &o, &c2);
  CHECK(unreachable(st));
  CHECK(c2 == NULL);
  CHECK(now_ms() - t0 < 4 * 3000); /* four calls, each within ~1.5 s */

  wait_for_driver("restart");

  /* Back: a fresh event without error, with the registration that was
     retried in the background. */
  ev = recv_until(sub, 0, 2, 30000);
  CHECK(ev != NULL);
  CHECK(strcmp(etcd_sd_event_instance(ev, 0), "one") == 0);
  CHECK(strcmp(etcd_sd_event_instance(ev, 1), "two") == 0);
  etcd_sd_event_free(ev);
  CHECK_OK(etcd_sd_registrar_register(r2));
  CHECK(etcd_sd_registrar_lease_id(r2) != 0);
  CHECK_OK(etcd_sd_client_get_entries(c, g_prefix, &s));
  CHECK(etcd_sd_strings_len(s) == 2);
  etcd_sd_strings_free(s);

  etcd_sd_registrar_free(r1);
  etcd_sd_registrar_free(r2);
  etcd_sd_subscription_free(sub);
  etcd_sd_instancer_free(i);
  CHECK(wait_count(&k, &k.drops, 1, 5000));
  CHECK(counter_get(&k, &k.violations) == 0);
  counter_destroy(&k);
  etcd_sd_client_free(c);
}

static void test_auth(void) {
  const char *user = getenv("ETCD_SD_TEST_USER");
  const char *password = getenv("ETCD_SD_TEST_PASSWORD");
  CHECK(user && password);
  const char *eps[1];
  eps[0] = g_endpoint;
  etcd_sd_client_options o;
  etcd_sd_client_options_init(&o);
  o.dial_timeout_ms = 3000;
  o.request_timeout_ms = 3000;
  o.username = user;
  o.password = "wrong-Zq81kP";
  etcd_sd_client *c = (etcd_sd_client *)1;
  CHECK_STATUS(etcd_sd_client_new(eps, 1, &o, &c), ETCD_SD_ERR_AUTH);
  CHECK(c == NULL);
  char err[512];
  etcd_sd_last_error(err, sizeof err);
  CHECK(strstr(err, "wrong-Zq81kP") == NULL); /* never the password */

  /* Without credentials: refused at connect or at the first read. */
  etcd_sd_client_options_init(&o);
  o.dial_timeout_ms = 3000;
  o.request_timeout_ms = 3000;
  etcd_sd_status st = etcd_sd_client_new(eps, 1, &o, &c);
  if (st == ETCD_SD_OK) {
    etcd_sd_strings *s = NULL;
    CHECK_STATUS(etcd_sd_client_get_entries(c, g_prefix, &s), ETCD_SD_ERR_AUTH);
    etcd_sd_registrar *r = NULL;
    char key[200];
    snprintf(key, sizeof key, "%sanon", g_prefix);
    CHECK_OK(etcd_sd_registrar_new(c, key, "anon", 0, 0, &r));
    CHECK_STATUS(etcd_sd_registrar_register(r), ETCD_SD_ERR_AUTH);
    etcd_sd_registrar_free(r);
    etcd_sd_client_free(c);
  } else {
    CHECK_STATUS(st, ETCD_SD_ERR_AUTH);
  }

  o.username = user;
  o.password = password;
  CHECK_OK(etcd_sd_client_new(eps, 1, &o, &c));
  char key[200];
  snprintf(key, sizeof key, "%sme", g_prefix);
  etcd_sd_registrar *r = NULL;
  CHECK_OK(etcd_sd_registrar_new(c, key, "me", 0, 0, &r));
  CHECK_OK(etcd_sd_registrar_register(r));
  etcd_sd_strings *s = NULL;
  CHECK_OK(etcd_sd_client_get_entries(c, g_prefix, &s));
  CHECK(etcd_sd_strings_len(s) == 1);
  etcd_sd_strings_free(s);
  etcd_sd_registrar_free(r);
  etcd_sd_client_free(c);
}

/* Sends SIGPIPE to each thread of this process whose name starts with
   `name` (from /proc/self/task/TID/comm); returns how many. */
static int sigpipe_threads_named(const char *name) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[300], comm[64] = {0};
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    if (fgets(comm, sizeof comm, f) && strncmp(comm, name, strlen(name)) == 0) {
      if (syscall(SYS_tgkill, (long)getpid(), atol(e->d_name), SIGPIPE) == 0) n++;
    }
    fclose(f);
  }
  closedir(d);
  return n;
}

static void test_sigpipe(void) {
  signal(SIGPIPE, SIG_DFL); /* what a C program has unless it says otherwise */
  const char *eps[1];
  eps[0] = g_endpoint;
  etcd_sd_client_options o;
  etcd_sd_client_options_init(&o);
  etcd_sd_client *c = NULL;
  CHECK_OK(etcd_sd_client_new(eps, 1, &o, &c));
  char key[200];
  snprintf(key, sizeof key, "%spiped", g_prefix);
  etcd_sd_registrar *r = NULL;
  CHECK_OK(etcd_sd_registrar_new(c, key, "piped", 1, 0, &r));
  CHECK_OK(etcd_sd_registrar_register(r));
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, g_prefix, &i));

  /* The runtime thread is the one that writes to etcd's sockets. */
  CHECK(sigpipe_threads_named("etcd-sd-runtime") == 1);

  /* Still alive, and the library still works after it. */
  struct timespec pause = {0, 200 * 1000 * 1000};
  nanosleep(&pause, NULL);
  etcd_sd_strings *s = NULL;
  CHECK_OK(etcd_sd_client_get_entries(c, g_prefix, &s));
  CHECK(etcd_sd_strings_len(s) == 1);
  etcd_sd_strings_free(s);
  etcd_sd_instancer_free(i);
  etcd_sd_registrar_free(r);
  etcd_sd_client_free(c);
}

/* Whether the file at `path` exists and contains `needle`. */
static int file_contains(const char *path, const char *needle) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  return strstr(buf, needle) != NULL;
}

static void test_snapshot(void) {
  const char *eps[1];
  eps[0] = g_endpoint;
  etcd_sd_client_options o;
  etcd_sd_client_options_init(&o);
  o.dial_timeout_ms = 1500;
  o.request_timeout_ms = 1500;
  etcd_sd_client *c = NULL;
  CHECK_OK(etcd_sd_client_new(eps, 1, &o, &c));
  char dir[] = "/tmp/etcd-sd-c-scenario-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char path[128];
  snprintf(path, sizeof path, "%s/svc.snapshot", dir);
  char key[200];
  snprintf(key, sizeof key, "%sone", g_prefix);
  etcd_sd_registrar *r = NULL;
  CHECK_OK(etcd_sd_registrar_new(c, key, "snap-one", 500, 20000, &r));
  CHECK_OK(etcd_sd_registrar_register(r));

  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new_with_snapshot(c, g_prefix, path, 0, &i));
  int written = 0;
  for (int n = 0; n < 100 && !written; n++) {
    written = file_contains(path, "\"snap-one\"");
    if (!written) sleep_ms(50);
  }
  CHECK(written);
  etcd_sd_instancer_free(i);

  wait_for_driver("kill");

  long long t0 = now_ms();
  i = NULL;
  CHECK_OK(etcd_sd_instancer_new_with_snapshot(c, g_prefix, path, 0, &i));
  CHECK(now_ms() - t0 < 3000);
  etcd_sd_subscription *sub = NULL;
  CHECK_OK(etcd_sd_instancer_subscribe(i, &sub));
  etcd_sd_event *ev = NULL;
  CHECK_OK(etcd_sd_subscription_recv(sub, 0, &ev));
  CHECK(unreachable(etcd_sd_event_error(ev)));
  CHECK(etcd_sd_event_len(ev) == 1);
  CHECK(strcmp(etcd_sd_event_instance(ev, 0), "snap-one") == 0);
  etcd_sd_event_free(ev);

  wait_for_driver("restart");

  ev = recv_until(sub, 0, 1, 30000);
  CHECK(ev != NULL);
  CHECK(strcmp(etcd_sd_event_instance(ev, 0), "snap-one") == 0);
  etcd_sd_event_free(ev);

  etcd_sd_subscription_free(sub);
  etcd_sd_instancer_free(i);
  etcd_sd_registrar_free(r);
  etcd_sd_client_free(c);
  CHECK(remove(path) == 0);
  CHECK(rmdir(dir) == 0);
}

int main(int argc, char **argv) {
  g_endpoint = getenv("ETCD_SD_TEST_ENDPOINT");
  g_prefix = getenv("ETCD_SD_TEST_PREFIX");
  if (argc < 2 || !g_endpoint || !g_prefix) {
    fprintf(stderr, "usage: ETCD_SD_TEST_ENDPOINT=... ETCD_SD_TEST_PREFIX=... %s outage|snapshot|auth|sigpipe\n",
            argv[0]);
    return 2;
  }
  int before = g_failed_checks;
  if (strcmp(argv[1], "outage") == 0) {
    test_outage();
  } else if (strcmp(argv[1], "snapshot") == 0) {
    test_snapshot();
  } else if (strcmp(argv[1], "auth") == 0) {
    test_auth();
  } else if (strcmp(argv[1], "sigpipe") == 0) {
    test_sigpipe();
  } else {
    fprintf(stderr, "unknown scenario %s\n", argv[1]);
    return 2;
  }
  int ok = g_failed_checks == before;
  printf("%s - %s\n%d passed, %d failed\n", ok ? "ok" : "FAILED", argv[1], ok, !ok);
  return ok ? 0 : 1;
}
