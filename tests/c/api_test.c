/*
 * End-to-end tests of the etcd-sd C API against a real etcd.
 *
 * Environment: ETCD_SD_TEST_ENDPOINT (host:port of a running etcd, required),
 * ETCD_SD_TEST_SLOW (multiplies the waits, for valgrind).
 * Run by tests/c_api.rs, which starts etcd and builds this file as C11 and as
 * C++17. Prints one line per test and "N passed, N failed" at the end; exits
 * non-zero on any failure.
 */
#include "test_util.h"

#include <unistd.h> /* rmdir */

static const char *g_endpoint;
static char g_prefix[128]; /* unique per run, ends with '/' */

/* "<run prefix><name>/" into buf. */
static const char *prefix_for(char *buf, size_t len, const char *name) {
  snprintf(buf, len, "%s%s/", g_prefix, name);
  return buf;
}

static etcd_sd_status connect_client(etcd_sd_client **out) {
  const char *eps[1];
  eps[0] = g_endpoint;
  etcd_sd_client_options o;
  etcd_sd_client_options_init(&o);
  o.request_timeout_ms = 5000 * (uint64_t)slow_factor();
  o.dial_timeout_ms = 5000 * (uint64_t)slow_factor();
  return etcd_sd_client_new(eps, 1, &o, out);
}

/* Registers key=value; returns the registrar (NULL on failure). */
static etcd_sd_registrar *put(etcd_sd_client *c, const char *prefix, const char *name,
                              const char *value) {
  char key[256];
  snprintf(key, sizeof key, "%s%s", prefix, name);
  etcd_sd_registrar *r = NULL;
  if (etcd_sd_registrar_new(c, key, value, 0, 0, &r) != ETCD_SD_OK) return NULL;
  if (etcd_sd_registrar_register(r) != ETCD_SD_OK) {
    etcd_sd_registrar_free(r);
    return NULL;
  }
  return r;
}

static size_t entries_len(etcd_sd_client *c, const char *prefix) {
  etcd_sd_strings *s = NULL;
  if (etcd_sd_client_get_entries(c, prefix, &s) != ETCD_SD_OK) return (size_t)-1;
  size_t n = etcd_sd_strings_len(s);
  etcd_sd_strings_free(s);
  return n;
}

static const char *BAD_UTF8 = "/bad-\xff\xfe/";

/* ---------------------------------------------------------------- basics */

static void test_version_and_status_str(void) {
  char want[64];
  snprintf(want, sizeof want, "%d.%d.%d", ETCD_SD_VERSION_MAJOR, ETCD_SD_VERSION_MINOR,
           ETCD_SD_VERSION_PATCH);
  CHECK(strcmp(etcd_sd_version(), want) == 0);
  CHECK(strcmp(etcd_sd_version(), ETCD_SD_VERSION) == 0);
  for (etcd_sd_status s = ETCD_SD_OK; s <= ETCD_SD_ERR_BUFFER_TOO_SMALL; s++) {
    CHECK(etcd_sd_status_str(s) != NULL);
    CHECK(strcmp(etcd_sd_status_str(s), "unknown status") != 0);
  }
  CHECK(strcmp(etcd_sd_status_str(ETCD_SD_OK), "ok") == 0);
  CHECK(strcmp(etcd_sd_status_str(-1), "unknown status") == 0);
  CHECK(strcmp(etcd_sd_status_str(1000), "unknown status") == 0);
}

static void test_last_error(void) {
  etcd_sd_client *c = (etcd_sd_client *)1;
  CHECK_STATUS(etcd_sd_client_new(NULL, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(c == NULL);
  size_t n = etcd_sd_last_error(NULL, 0);
  CHECK(n > 10);
  char full[256];
  CHECK(etcd_sd_last_error(full, sizeof full) == n);
  CHECK(strlen(full) == n);
  CHECK(strstr(full, "endpoints") != NULL);
  char small[5];
  memset(small, 'x', sizeof small);
  CHECK(etcd_sd_last_error(small, sizeof small) == n);
  CHECK(strlen(small) == 4);
  CHECK(strncmp(small, full, 4) == 0);
  char one[1] = {'x'};
  CHECK(etcd_sd_last_error(one, 1) == n);
  CHECK(one[0] == '\0');
  CHECK(etcd_sd_last_error(NULL, 10) == n); /* NULL buffer: length only */
  /* A success leaves the text alone. */
  CHECK(strcmp(etcd_sd_version(), ETCD_SD_VERSION) == 0);
  CHECK(etcd_sd_last_error(NULL, 0) == n);
}

static void *other_thread_error(void *arg) {
  size_t *len = (size_t *)arg;
  *len = etcd_sd_last_error(NULL, 0);
  etcd_sd_strings_free(NULL);
  return NULL;
}

static void test_last_error_is_per_thread(void) {
  CHECK_STATUS(etcd_sd_client_new(NULL, 0, NULL, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(etcd_sd_last_error(NULL, 0) > 0);
  size_t other = 99;
  pthread_t t;
  CHECK(pthread_create(&t, NULL, other_thread_error, &other) == 0);
  pthread_join(t, NULL);
  CHECK(other == 0);
}

/* ---------------------------------------------------------------- client */

static void test_client_new_errors(void) {
  etcd_sd_client *c = (etcd_sd_client *)1;
  const char *eps[2];
  eps[0] = g_endpoint;
  eps[1] = NULL;

  CHECK_STATUS(etcd_sd_client_new(eps, 1, NULL, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_client_new(NULL, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(c == NULL);
  c = (etcd_sd_client *)1;
  CHECK_STATUS(etcd_sd_client_new(eps, 2, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(c == NULL);
  CHECK_STATUS(etcd_sd_client_new(eps, 0, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  const char *bad[1];
  bad[0] = BAD_UTF8;
  CHECK_STATUS(etcd_sd_client_new(bad, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  bad[0] = "";
  CHECK_STATUS(etcd_sd_client_new(bad, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  bad[0] = "http://";
  CHECK_STATUS(etcd_sd_client_new(bad, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  bad[0] = "127.0.0.1:notaport";
  CHECK_STATUS(etcd_sd_client_new(bad, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);

  etcd_sd_client_options o;
  etcd_sd_client_options_init(&o);
  CHECK(o.cert == NULL && o.key == NULL && o.ca_cert == NULL);
  CHECK(o.username == NULL && o.password == NULL);
  CHECK(o.dial_timeout_ms == 0 && o.dial_keep_alive_ms == 0 && o.request_timeout_ms == 0);
  etcd_sd_client_options_init(NULL); /* no crash */

  o.username = BAD_UTF8;
  CHECK_STATUS(etcd_sd_client_new(eps, 1, &o, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  o.username = NULL;
  o.password = "s\xc3\x28secret";
  CHECK_STATUS(etcd_sd_client_new(eps, 1, &o, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  {
    char err[256];
    etcd_sd_last_error(err, sizeof err);
    CHECK(strstr(err, "password") != NULL);
    CHECK(strstr(err, "secret") == NULL); /* never the password itself */
  }
  o.password = NULL;
  o.cert = "/nonexistent/cert.pem"; /* a certificate without its key */
  CHECK_STATUS(etcd_sd_client_new(eps, 1, &o, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  o.cert = NULL;
  o.ca_cert = "/nonexistent/etcd-sd-ca.pem";
  CHECK_STATUS(etcd_sd_client_new(eps, 1, &o, &c), ETCD_SD_ERR_TLS);
  CHECK(c == NULL);

  /* Nobody listens on port 1: unavailable or timed out, within the dial timeout. */
  etcd_sd_client_options_init(&o);
  o.dial_timeout_ms = 500;
  bad[0] = "127.0.0.1:1";
  etcd_sd_status st = etcd_sd_client_new(bad, 1, &o, &c);
  CHECK(st == ETCD_SD_ERR_UNAVAILABLE || st == ETCD_SD_ERR_TIMEOUT);
  CHECK(c == NULL);

  etcd_sd_client_free(NULL);
}

static void test_client_and_entries(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  CHECK(c != NULL);
  /* Defaults, and the http:// form. */
  {
    char url[128];
    snprintf(url, sizeof url, "http://%s", g_endpoint);
    const char *eps[1];
    eps[0] = url;
    etcd_sd_client *c2 = NULL;
    CHECK_OK(etcd_sd_client_new(eps, 1, NULL, &c2));
    etcd_sd_client_free(c2);
  }

  char p[160];
  prefix_for(p, sizeof p, "entries");
  etcd_sd_strings *s = (etcd_sd_strings *)1;
  CHECK_OK(etcd_sd_client_get_entries(c, p, &s));
  CHECK(etcd_sd_strings_len(s) == 0);
  CHECK(etcd_sd_strings_get(s, 0) == NULL);
  etcd_sd_strings_free(s);

  etcd_sd_registrar *rb = put(c, p, "b", "value-b");
  etcd_sd_registrar *ra = put(c, p, "a", "value-a");
  CHECK(ra && rb);
  s = NULL;
  CHECK_OK(etcd_sd_client_get_entries(c, p, &s));
  CHECK(etcd_sd_strings_len(s) == 2);
  CHECK(strcmp(etcd_sd_strings_get(s, 0), "value-a") == 0); /* key order */
  CHECK(strcmp(etcd_sd_strings_get(s, 1), "value-b") == 0);
  CHECK(etcd_sd_strings_get(s, 2) == NULL);
  CHECK(etcd_sd_strings_get(s, (size_t)-1) == NULL);
  etcd_sd_strings_free(s);
  etcd_sd_strings_free(NULL);
  CHECK(etcd_sd_strings_len(NULL) == 0);
  CHECK(etcd_sd_strings_get(NULL, 0) == NULL);

  s = (etcd_sd_strings *)1;
  CHECK_STATUS(etcd_sd_client_get_entries(NULL, p, &s), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(s == NULL);
  CHECK_STATUS(etcd_sd_client_get_entries(c, NULL, &s), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_client_get_entries(c, p, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_client_get_entries(c, "", &s), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_client_get_entries(c, BAD_UTF8, &s), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(s == NULL);

  etcd_sd_registrar_free(ra);
  etcd_sd_registrar_free(rb);
  CHECK(entries_len(c, p) == 0);
  etcd_sd_client_free(c);
}

/* ---------------------------------------------------------------- registrar */

static void test_registrar(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160], key[200];
  prefix_for(p, sizeof p, "registrar");
  snprintf(key, sizeof key, "%s1.2.3.4:8080", p);

  etcd_sd_registrar *r = (etcd_sd_registrar *)1;
  CHECK_STATUS(etcd_sd_registrar_new(NULL, key, "v", 0, 0, &r), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(r == NULL);
  CHECK_STATUS(etcd_sd_registrar_new(c, NULL, "v", 0, 0, &r), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_registrar_new(c, key, NULL, 0, 0, &r), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_registrar_new(c, key, "v", 0, 0, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_registrar_new(c, BAD_UTF8, "v", 0, 0, &r), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_registrar_new(c, key, BAD_UTF8, 0, 0, &r), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_registrar_new(c, "", "v", 0, 0, &r), ETCD_SD_ERR_NO_KEY);
  CHECK_STATUS(etcd_sd_registrar_new(c, "", "", 0, 0, &r), ETCD_SD_ERR_NO_KEY);
  CHECK_STATUS(etcd_sd_registrar_new(c, key, "", 0, 0, &r), ETCD_SD_ERR_NO_VALUE);
  CHECK(r == NULL);
  CHECK_STATUS(etcd_sd_registrar_register(NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_registrar_deregister(NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(etcd_sd_registrar_lease_id(NULL) == 0);
  etcd_sd_registrar_free(NULL);

  CHECK_OK(etcd_sd_registrar_new(c, key, "http://1.2.3.4:8080", 1000, 5000, &r));
  CHECK(etcd_sd_registrar_lease_id(r) == 0);
  CHECK_OK(etcd_sd_registrar_deregister(r)); /* before register: fine */
  CHECK_OK(etcd_sd_registrar_register(r));
  int64_t lease = etcd_sd_registrar_lease_id(r);
  CHECK(lease != 0);
  CHECK_OK(etcd_sd_registrar_register(r)); /* again: at once */
  CHECK(etcd_sd_registrar_lease_id(r) == lease);
  etcd_sd_strings *s = NULL;
  CHECK_OK(etcd_sd_client_get_entries(c, p, &s));
  CHECK(etcd_sd_strings_len(s) == 1);
  CHECK(strcmp(etcd_sd_strings_get(s, 0), "http://1.2.3.4:8080") == 0);
  etcd_sd_strings_free(s);

  CHECK_OK(etcd_sd_registrar_deregister(r));
  CHECK(etcd_sd_registrar_lease_id(r) == 0);
  CHECK(entries_len(c, p) == 0); /* the lease is revoked: the key is gone at once */
  CHECK_OK(etcd_sd_registrar_deregister(r)); /* twice: fine */
  CHECK_OK(etcd_sd_registrar_register(r));   /* and back */
  CHECK(etcd_sd_registrar_lease_id(r) != 0);
  CHECK(entries_len(c, p) == 1);
  etcd_sd_registrar_free(r); /* deregisters */
  CHECK(entries_len(c, p) == 0);
  etcd_sd_client_free(c);
}

/* ---------------------------------------------------------------- drain */

static etcd_sd_registration_state state_of(const etcd_sd_registrar *r) {
  etcd_sd_registration_state st = -1;
  if (etcd_sd_registrar_state(r, &st) != ETCD_SD_OK) return -1;
  return st;
}

static void test_pause_and_resume(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160], key[200];
  prefix_for(p, sizeof p, "pause");
  snprintf(key, sizeof key, "%ssvc", p);

  CHECK_STATUS(etcd_sd_registrar_pause(NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_registrar_resume(NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  etcd_sd_registration_state st = 77;
  CHECK_STATUS(etcd_sd_registrar_state(NULL, &st), ETCD_SD_ERR_INVALID_ARGUMENT);

  etcd_sd_registrar *r = NULL;
  CHECK_OK(etcd_sd_registrar_new(c, key, "svc:1", 500, 2000, &r));
  CHECK_STATUS(etcd_sd_registrar_state(r, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(state_of(r) == ETCD_SD_STATE_UNREGISTERED);
  CHECK_OK(etcd_sd_registrar_pause(r)); /* before register: fine */
  CHECK(state_of(r) == ETCD_SD_STATE_PAUSED);
  CHECK(entries_len(c, p) == 0);
  CHECK_OK(etcd_sd_registrar_resume(r)); /* resume is register */
  CHECK(state_of(r) == ETCD_SD_STATE_REGISTERED);
  int64_t lease = etcd_sd_registrar_lease_id(r);
  CHECK(lease != 0);
  CHECK(entries_len(c, p) == 1);

  CHECK_OK(etcd_sd_registrar_pause(r));
  CHECK(state_of(r) == ETCD_SD_STATE_PAUSED);
  CHECK(etcd_sd_registrar_lease_id(r) == 0);
  CHECK(entries_len(c, p) == 0); /* the lease is revoked: the key is gone at once */
  CHECK_OK(etcd_sd_registrar_pause(r)); /* twice: fine */
  sleep_ms(2500);                       /* past the ttl: nothing brings it back */
  CHECK(entries_len(c, p) == 0);
  CHECK(state_of(r) == ETCD_SD_STATE_PAUSED);

  CHECK_OK(etcd_sd_registrar_resume(r));
  CHECK(state_of(r) == ETCD_SD_STATE_REGISTERED);
  CHECK(etcd_sd_registrar_lease_id(r) != 0 && etcd_sd_registrar_lease_id(r) != lease);
  CHECK(entries_len(c, p) == 1);

  etcd_sd_stats stats;
  CHECK_OK(etcd_sd_client_stats(c, &stats, sizeof stats));
  CHECK(stats.registered == 1 && stats.registrars == 1);
  CHECK_OK(etcd_sd_registrar_pause(r));
  CHECK_OK(etcd_sd_client_stats(c, &stats, sizeof stats));
  CHECK(stats.registered == 0 && stats.registrars == 1);

  CHECK_OK(etcd_sd_registrar_deregister(r)); /* after pause: fine */
  CHECK(state_of(r) == ETCD_SD_STATE_DEREGISTERED);
  CHECK(entries_len(c, p) == 0);
  etcd_sd_registrar_free(r);
  etcd_sd_client_free(c);
}

/* ---------------------------------------------------------------- lazy client */

static void test_lazy_client(void) {
  etcd_sd_client_options o;
  etcd_sd_client_options_init(&o);
  o.request_timeout_ms = 1000 * (uint64_t)slow_factor();
  etcd_sd_client *c = (etcd_sd_client *)1;
  const char *eps[1];

  /* The arguments are checked as etcd_sd_client_new checks them. */
  eps[0] = g_endpoint;
  CHECK_STATUS(etcd_sd_client_new_lazy(eps, 1, NULL, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_client_new_lazy(NULL, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(c == NULL);
  CHECK_STATUS(etcd_sd_client_new_lazy(eps, 0, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  eps[0] = "host:notaport";
  CHECK_STATUS(etcd_sd_client_new_lazy(eps, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  eps[0] = BAD_UTF8;
  CHECK_STATUS(etcd_sd_client_new_lazy(eps, 1, NULL, &c), ETCD_SD_ERR_INVALID_ARGUMENT);
  eps[0] = "127.0.0.1:1";
  o.ca_cert = "/nonexistent/etcd-sd-ca.pem";
  CHECK_STATUS(etcd_sd_client_new_lazy(eps, 1, &o, &c), ETCD_SD_ERR_TLS);
  CHECK(c == NULL);
  o.ca_cert = NULL;

  /* Nothing listens on port 1: made at once; calls fail in time. */
  CHECK_OK(etcd_sd_client_new_lazy(eps, 1, &o, &c));
  CHECK(c != NULL);
  etcd_sd_stats stats;
  CHECK_OK(etcd_sd_client_stats(c, &stats, sizeof stats));
  CHECK(stats.connected == 0);
  etcd_sd_strings *s = NULL;
  etcd_sd_status got = etcd_sd_client_get_entries(c, "/x/", &s);
  CHECK(got == ETCD_SD_ERR_TIMEOUT || got == ETCD_SD_ERR_UNAVAILABLE);
  CHECK(s == NULL);
  etcd_sd_instancer *i = NULL;
  got = etcd_sd_instancer_new(c, "/x/", &i);
  CHECK(got == ETCD_SD_ERR_TIMEOUT || got == ETCD_SD_ERR_UNAVAILABLE);
  CHECK(i == NULL);
  etcd_sd_registrar *r = NULL;
  CHECK_OK(etcd_sd_registrar_new(c, "/x/svc", "v", 0, 0, &r));
  got = etcd_sd_registrar_register(r);
  CHECK(got == ETCD_SD_ERR_TIMEOUT || got == ETCD_SD_ERR_UNAVAILABLE);
  CHECK(state_of(r) == ETCD_SD_STATE_REGISTERING); /* still trying */
  CHECK_OK(etcd_sd_registrar_pause(r));            /* no lease yet: Ok */
  CHECK(state_of(r) == ETCD_SD_STATE_PAUSED);
  etcd_sd_registrar_free(r);
  etcd_sd_client_free(c); /* never waits for etcd */

  /* With etcd up it is a client like any other. */
  eps[0] = g_endpoint;
  c = NULL;
  CHECK_OK(etcd_sd_client_new_lazy(eps, 1, NULL, &c));
  char p[160];
  prefix_for(p, sizeof p, "lazy");
  r = put(c, p, "svc", "svc:1");
  CHECK(r != NULL);
  CHECK(entries_len(c, p) == 1);
  etcd_sd_registrar_free(r);
  CHECK(entries_len(c, p) == 0);
  etcd_sd_client_free(c);
}

/* ---------------------------------------------------------------- instancer */

static void test_instancer_and_subscription(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "subscription");
  etcd_sd_registrar *r1 = put(c, p, "1", "one");
  CHECK(r1 != NULL);

  etcd_sd_instancer *i = (etcd_sd_instancer *)1;
  CHECK_STATUS(etcd_sd_instancer_new(NULL, p, &i), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(i == NULL);
  CHECK_STATUS(etcd_sd_instancer_new(c, NULL, &i), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_instancer_new(c, p, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_instancer_new(c, "", &i), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_instancer_new(c, BAD_UTF8, &i), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(i == NULL);
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));

  etcd_sd_subscription *sub = (etcd_sd_subscription *)1;
  CHECK_STATUS(etcd_sd_instancer_subscribe(NULL, &sub), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(sub == NULL);
  CHECK_STATUS(etcd_sd_instancer_subscribe(i, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_OK(etcd_sd_instancer_subscribe(i, &sub));

  /* The current state at once, even with a zero timeout. */
  etcd_sd_event *ev = NULL;
  CHECK_OK(etcd_sd_subscription_recv(sub, 0, &ev));
  CHECK(etcd_sd_event_len(ev) == 1);
  CHECK(strcmp(etcd_sd_event_instance(ev, 0), "one") == 0);
  CHECK(etcd_sd_event_instance(ev, 1) == NULL);
  CHECK_OK(etcd_sd_event_error(ev));
  etcd_sd_event_free(ev);

  /* Nothing more yet. */
  ev = (etcd_sd_event *)1;
  CHECK_STATUS(etcd_sd_subscription_try_recv(sub, &ev), ETCD_SD_NODATA);
  CHECK(ev == NULL);
  ev = (etcd_sd_event *)1;
  CHECK_STATUS(etcd_sd_subscription_recv(sub, 0, &ev), ETCD_SD_ERR_TIMEOUT);
  CHECK(ev == NULL);
  CHECK_STATUS(etcd_sd_subscription_recv(sub, 50, &ev), ETCD_SD_ERR_TIMEOUT);

  /* A change arrives; a value already in the set (a second key with the same
     value) is not a change. */
  etcd_sd_registrar *r2 = put(c, p, "2", "two");
  etcd_sd_registrar *r3 = put(c, p, "3", "one");
  CHECK(r2 && r3);
  CHECK_OK(etcd_sd_subscription_recv(sub, 10000, &ev));
  CHECK(etcd_sd_event_len(ev) == 2);
  CHECK(strcmp(etcd_sd_event_instance(ev, 0), "one") == 0);
  CHECK(strcmp(etcd_sd_event_instance(ev, 1), "two") == 0);
  etcd_sd_event_free(ev);
  ev = NULL;
  CHECK_STATUS(etcd_sd_subscription_recv(sub, 300, &ev), ETCD_SD_ERR_TIMEOUT);

  /* No deadline (UINT64_MAX): returns as soon as the change comes. */
  etcd_sd_registrar_free(r2);
  CHECK_OK(etcd_sd_subscription_recv(sub, UINT64_MAX, &ev));
  CHECK(etcd_sd_event_len(ev) == 1);
  etcd_sd_event_free(ev);

  /* NULL arguments. */
  CHECK_STATUS(etcd_sd_subscription_recv(NULL, 0, &ev), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_subscription_recv(sub, 0, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_subscription_try_recv(NULL, &ev), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_subscription_try_recv(sub, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(etcd_sd_event_len(NULL) == 0);
  CHECK(etcd_sd_event_instance(NULL, 0) == NULL);
  CHECK_STATUS(etcd_sd_event_error(NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  etcd_sd_event_free(NULL);
  etcd_sd_subscription_free(NULL);

  /* Two subscriptions are independent. */
  etcd_sd_subscription *sub2 = NULL;
  CHECK_OK(etcd_sd_instancer_subscribe(i, &sub2));
  CHECK_OK(etcd_sd_subscription_try_recv(sub2, &ev));
  CHECK(etcd_sd_event_len(ev) == 1);
  etcd_sd_event_free(ev);
  etcd_sd_subscription_free(sub2);

  /* Stop: what was delivered can still be received, then CLOSED, even with
     no deadline; every call on the instancer is CLOSED. */
  etcd_sd_instancer_stop(i);
  etcd_sd_instancer_stop(i); /* twice: fine */
  etcd_sd_instancer_stop(NULL);
  etcd_sd_status st = ETCD_SD_OK;
  for (int n = 0; n < 20 && st == ETCD_SD_OK; n++) {
    ev = NULL;
    st = etcd_sd_subscription_recv(sub, UINT64_MAX, &ev);
    etcd_sd_event_free(ev);
  }
  CHECK_STATUS(st, ETCD_SD_ERR_CLOSED);
  CHECK_STATUS(etcd_sd_subscription_try_recv(sub, &ev), ETCD_SD_ERR_CLOSED);
  CHECK(ev == NULL);
  CHECK_STATUS(etcd_sd_subscription_recv(sub, 10, &ev), ETCD_SD_ERR_CLOSED);
  etcd_sd_subscription_free(sub);

  etcd_sd_subscription *late = (etcd_sd_subscription *)1;
  CHECK_STATUS(etcd_sd_instancer_subscribe(i, &late), ETCD_SD_ERR_CLOSED);
  CHECK(late == NULL);
  CHECK_STATUS(etcd_sd_instancer_remove_callback(i, 1), ETCD_SD_ERR_CLOSED);
  counter k;
  counter_init(&k);
  uint64_t id = 7;
  CHECK_STATUS(etcd_sd_instancer_on_update(i, on_event, on_drop, &k, &id), ETCD_SD_ERR_CLOSED);
  CHECK(id == 0);
  CHECK(k.drops == 1 && k.calls == 0); /* the context is released even then */
  counter_destroy(&k);
  etcd_sd_balancer *b = (etcd_sd_balancer *)1;
  CHECK_STATUS(etcd_sd_balancer_round_robin(i, &b), ETCD_SD_ERR_CLOSED);
  CHECK(b == NULL);
  CHECK_STATUS(etcd_sd_balancer_random(i, 1, &b), ETCD_SD_ERR_CLOSED);

  etcd_sd_instancer_free(i);
  etcd_sd_instancer_free(NULL);
  etcd_sd_registrar_free(r1);
  etcd_sd_registrar_free(r3);
  etcd_sd_client_free(c);
}

/* ---------------------------------------------------------------- callbacks */

static void test_callbacks_order_and_drop_once(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "callbacks");
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));

  counter k;
  counter_init(&k);
  uint64_t id = 0;
  CHECK_STATUS(etcd_sd_instancer_on_update(NULL, on_event, on_drop, &k, &id),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(k.drops == 1); /* released on failure too */
  k.drops = 0;
  CHECK_STATUS(etcd_sd_instancer_on_update(i, NULL, on_drop, &k, &id),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(k.drops == 1);
  k.drops = 0;
  CHECK_STATUS(etcd_sd_instancer_on_update(i, on_event, on_drop, &k, NULL),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(k.drops == 1 && k.calls == 0);
  k.drops = 0;
  CHECK_STATUS(etcd_sd_instancer_on_update(i, NULL, NULL, NULL, NULL),
               ETCD_SD_ERR_INVALID_ARGUMENT);

  CHECK_OK(etcd_sd_instancer_on_update(i, on_event, on_drop, &k, &id));
  CHECK(id != 0);
  /* The current state (empty) at once, on the dispatcher thread. */
  CHECK(wait_count(&k, &k.calls, 1, 5000));

  /* Three additions: the callback sees a non-decreasing count, ending at 3. */
  etcd_sd_registrar *rs[3];
  const char *names[3] = {"a", "b", "c"};
  for (int n = 0; n < 3; n++) {
    rs[n] = put(c, p, names[n], names[n]);
    CHECK(rs[n] != NULL);
  }
  for (int tries = 0; tries < 400; tries++) {
    pthread_mutex_lock(&k.mu);
    size_t last = k.n_lens ? k.lens[k.n_lens - 1] : 0;
    pthread_mutex_unlock(&k.mu);
    if (last == 3) break;
    sleep_ms(10 * slow_factor());
  }
  pthread_mutex_lock(&k.mu);
  int n_lens = k.n_lens;
  size_t lens[64];
  memcpy(lens, k.lens, sizeof lens);
  int status = k.last_error_status;
  pthread_mutex_unlock(&k.mu);
  CHECK(n_lens >= 2);
  CHECK(lens[0] == 0);
  CHECK(lens[n_lens - 1] == 3);
  for (int n = 1; n < n_lens; n++) CHECK(lens[n] > lens[n - 1]); /* only real changes */
  CHECK_OK(status);

  /* Remove: no call after it returns, drop exactly once. */
  CHECK_OK(etcd_sd_instancer_remove_callback(i, id));
  int calls = counter_get(&k, &k.calls);
  CHECK(wait_count(&k, &k.drops, 1, 5000));
  CHECK_OK(etcd_sd_instancer_remove_callback(i, id)); /* again: ignored */
  CHECK_OK(etcd_sd_instancer_remove_callback(i, 987654321)); /* unknown: ignored */
  etcd_sd_registrar_free(rs[0]);
  sleep_ms(200);
  CHECK(counter_get(&k, &k.calls) == calls);
  CHECK(counter_get(&k, &k.drops) == 1);
  CHECK(counter_get(&k, &k.violations) == 0);

  /* A callback without a drop function. */
  counter k2;
  counter_init(&k2);
  uint64_t id2 = 0;
  CHECK_OK(etcd_sd_instancer_on_update(i, on_event, NULL, &k2, &id2));
  CHECK(id2 != 0 && id2 != id);
  CHECK(wait_count(&k2, &k2.calls, 1, 5000));
  CHECK_OK(etcd_sd_instancer_remove_callback(i, id2));
  CHECK(counter_get(&k2, &k2.drops) == 0);

  etcd_sd_instancer_free(i);
  etcd_sd_registrar_free(rs[1]);
  etcd_sd_registrar_free(rs[2]);
  etcd_sd_client_free(c);
  CHECK(k.drops == 1);
  counter_destroy(&k);
  counter_destroy(&k2);
}

static void test_callback_removes_itself(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "self-remove");
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));
  counter k;
  counter_init(&k);
  k.instancer = i;
  k.remove_on_call = 2;
  k.try_free_event = 1; /* must be ignored: the event is lent */
  uint64_t id = 0;
  CHECK_OK(etcd_sd_instancer_on_update(i, on_event, on_drop, &k, &id));
  pthread_mutex_lock(&k.mu);
  k.id = id;
  pthread_mutex_unlock(&k.mu);
  CHECK(wait_count(&k, &k.calls, 1, 5000));
  etcd_sd_registrar *r = put(c, p, "x", "x");
  CHECK(r != NULL);
  CHECK(wait_count(&k, &k.drops, 1, 10000)); /* removed from inside call 2 */
  CHECK(counter_get(&k, &k.calls) == 2);
  CHECK_STATUS(counter_get(&k, &k.action_status), ETCD_SD_OK);
  etcd_sd_registrar_free(r);
  sleep_ms(200);
  CHECK(counter_get(&k, &k.calls) == 2);
  CHECK(counter_get(&k, &k.violations) == 0);
  etcd_sd_instancer_free(i);
  etcd_sd_client_free(c);
  CHECK(k.drops == 1);
  counter_destroy(&k);
}

static void test_callback_stops_and_frees_its_instancer(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "self-stop");

  /* Stop from inside the first call. */
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));
  counter k;
  counter_init(&k);
  k.instancer = i;
  k.stop_on_call = 1;
  uint64_t id = 0;
  CHECK_OK(etcd_sd_instancer_on_update(i, on_event, on_drop, &k, &id));
  CHECK(wait_count(&k, &k.drops, 1, 5000));
  CHECK(counter_get(&k, &k.calls) == 1);
  etcd_sd_subscription *sub = NULL;
  CHECK_STATUS(etcd_sd_instancer_subscribe(i, &sub), ETCD_SD_ERR_CLOSED);
  etcd_sd_instancer_free(i);

  /* Free from inside the first call (its last use of the instancer). */
  counter k2;
  counter_init(&k2);
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));
  k2.instancer = i;
  k2.free_on_call = 1;
  CHECK_OK(etcd_sd_instancer_on_update(i, on_event, on_drop, &k2, &id));
  CHECK(wait_count(&k2, &k2.drops, 1, 5000));
  CHECK(counter_get(&k2, &k2.calls) == 1);
  CHECK(counter_get(&k, &k.violations) == 0);
  CHECK(counter_get(&k2, &k2.violations) == 0);
  etcd_sd_client_free(c);
  counter_destroy(&k);
  counter_destroy(&k2);
}

static void test_free_with_live_callbacks_and_subscriptions(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "free-live");
  etcd_sd_registrar *r = put(c, p, "k", "v");
  CHECK(r != NULL);
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));
  counter k1, k2;
  counter_init(&k1);
  counter_init(&k2);
  uint64_t id1 = 0, id2 = 0;
  CHECK_OK(etcd_sd_instancer_on_update(i, on_event, on_drop, &k1, &id1));
  CHECK_OK(etcd_sd_instancer_on_update(i, on_event, on_drop, &k2, &id2));
  etcd_sd_subscription *sub = NULL;
  CHECK_OK(etcd_sd_instancer_subscribe(i, &sub));
  etcd_sd_balancer *b = NULL;
  CHECK_OK(etcd_sd_balancer_round_robin(i, &b));
  CHECK(wait_count(&k1, &k1.calls, 1, 5000));

  etcd_sd_instancer_free(i); /* with two callbacks, a subscription, a balancer */
  CHECK(wait_count(&k1, &k1.drops, 1, 5000));
  CHECK(wait_count(&k2, &k2.drops, 1, 5000));
  etcd_sd_event *ev = NULL;
  etcd_sd_status st = ETCD_SD_OK;
  for (int n = 0; n < 20 && st == ETCD_SD_OK; n++) {
    st = etcd_sd_subscription_recv(sub, 5000, &ev);
    etcd_sd_event_free(ev);
    ev = NULL;
  }
  CHECK_STATUS(st, ETCD_SD_ERR_CLOSED);
  char buf[64];
  size_t len = 0;
  CHECK_STATUS(etcd_sd_balancer_next(b, buf, sizeof buf, &len), ETCD_SD_ERR_CLOSED);
  etcd_sd_subscription_free(sub);
  etcd_sd_balancer_free(b);
  CHECK(counter_get(&k1, &k1.drops) == 1 && counter_get(&k2, &k2.drops) == 1);
  CHECK(k1.violations == 0 && k2.violations == 0);
  etcd_sd_registrar_free(r);
  etcd_sd_client_free(c);
  counter_destroy(&k1);
  counter_destroy(&k2);
}

static void test_objects_outlive_the_client(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "outlive");
  etcd_sd_registrar *r = NULL;
  char key[200];
  snprintf(key, sizeof key, "%sme", p);
  CHECK_OK(etcd_sd_registrar_new(c, key, "me", 0, 0, &r));
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));
  etcd_sd_subscription *sub = NULL;
  CHECK_OK(etcd_sd_instancer_subscribe(i, &sub));
  etcd_sd_client_free(c); /* registrar, instancer and subscription keep working */

  CHECK_OK(etcd_sd_registrar_register(r));
  etcd_sd_event *ev = NULL;
  int seen = 0;
  for (int n = 0; n < 10 && !seen; n++) {
    if (etcd_sd_subscription_recv(sub, 5000, &ev) != ETCD_SD_OK) break;
    seen = etcd_sd_event_len(ev) == 1 && strcmp(etcd_sd_event_instance(ev, 0), "me") == 0;
    etcd_sd_event_free(ev);
  }
  CHECK(seen);
  etcd_sd_registrar_free(r);
  CHECK_OK(etcd_sd_subscription_recv(sub, 5000, &ev));
  CHECK(etcd_sd_event_len(ev) == 0);
  etcd_sd_event_free(ev);
  etcd_sd_subscription_free(sub);
  etcd_sd_instancer_free(i); /* the last reference: the client's threads end */
}

/* ---------------------------------------------------------------- balancers */

static void test_balancers(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "balancer");
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));

  etcd_sd_balancer *b = (etcd_sd_balancer *)1;
  CHECK_STATUS(etcd_sd_balancer_round_robin(NULL, &b), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(b == NULL);
  CHECK_STATUS(etcd_sd_balancer_round_robin(i, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_balancer_random(NULL, 1, &b), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_balancer_random(i, 1, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_OK(etcd_sd_balancer_round_robin(i, &b));

  /* Empty set. */
  char buf[64];
  size_t len = 99;
  CHECK_STATUS(etcd_sd_balancer_next(b, buf, sizeof buf, &len), ETCD_SD_ERR_NO_ENDPOINTS);
  CHECK(len == 0);

  etcd_sd_registrar *ra = put(c, p, "a", "inst-a");
  etcd_sd_registrar *rb = put(c, p, "b", "inst-bb");
  etcd_sd_registrar *rc = put(c, p, "c", "inst-ccc");
  CHECK(ra && rb && rc);
  /* Wait until the balancer sees all three. */
  int seen_c = 0;
  for (int n = 0; n < 500 && !seen_c; n++) {
    if (etcd_sd_balancer_next(b, buf, sizeof buf, &len) == ETCD_SD_OK)
      seen_c = strcmp(buf, "inst-ccc") == 0;
    if (!seen_c) sleep_ms(10 * slow_factor());
  }
  CHECK(seen_c);
  /* Round robin, in sorted order. */
  const char *want[6] = {"inst-a", "inst-bb", "inst-ccc", "inst-a", "inst-bb", "inst-ccc"};
  for (int n = 0; n < 6; n++) {
    CHECK_OK(etcd_sd_balancer_next(b, buf, sizeof buf, &len));
    CHECK(strcmp(buf, want[n]) == 0);
    CHECK(len == strlen(want[n]) + 1);
  }
  /* Asking for the size does not skip an instance. */
  len = 0;
  CHECK_STATUS(etcd_sd_balancer_next(b, NULL, 0, &len), ETCD_SD_ERR_BUFFER_TOO_SMALL);
  CHECK(len == strlen("inst-a") + 1);
  char tiny[3] = {'x', 'x', 'x'};
  CHECK_STATUS(etcd_sd_balancer_next(b, tiny, sizeof tiny, &len), ETCD_SD_ERR_BUFFER_TOO_SMALL);
  CHECK(tiny[0] == '\0');
  CHECK(len == strlen("inst-a") + 1);
  char exact[7];
  CHECK_OK(etcd_sd_balancer_next(b, exact, sizeof exact, &len));
  CHECK(strcmp(exact, "inst-a") == 0);
  CHECK_OK(etcd_sd_balancer_next(b, buf, sizeof buf, &len));
  CHECK(strcmp(buf, "inst-bb") == 0);
  /* NULL arguments. */
  CHECK_STATUS(etcd_sd_balancer_next(NULL, buf, sizeof buf, &len), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_balancer_next(b, buf, sizeof buf, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_balancer_next(b, NULL, 10, &len), ETCD_SD_ERR_INVALID_ARGUMENT);

  /* Random: the same seed gives the same sequence; every pick is an instance. */
  etcd_sd_balancer *r1 = NULL, *r2 = NULL;
  CHECK_OK(etcd_sd_balancer_random(i, 42, &r1));
  CHECK_OK(etcd_sd_balancer_random(i, 42, &r2));
  int differs_from_first = 0;
  for (int n = 0; n < 20; n++) {
    char x[64], y[64];
    CHECK_OK(etcd_sd_balancer_next(r1, x, sizeof x, &len));
    CHECK_OK(etcd_sd_balancer_next(r2, y, sizeof y, &len));
    CHECK(strcmp(x, y) == 0);
    CHECK(strncmp(x, "inst-", 5) == 0);
    if (strcmp(x, "inst-a") != 0) differs_from_first = 1;
  }
  CHECK(differs_from_first);
  etcd_sd_balancer_free(r1);
  etcd_sd_balancer_free(r2);
  etcd_sd_balancer_free(NULL);

  etcd_sd_balancer_free(b);
  etcd_sd_registrar_free(ra);
  etcd_sd_registrar_free(rb);
  etcd_sd_registrar_free(rc);
  etcd_sd_instancer_free(i);
  etcd_sd_client_free(c);
}

typedef struct attempts {
  int calls;
  int succeed_on; /* 0: never */
  long sleep_ms;
  char last[64];
} attempts;

static int attempt(const char *instance, void *ctx) {
  attempts *a = (attempts *)ctx;
  a->calls++;
  snprintf(a->last, sizeof a->last, "%s", instance);
  if (a->sleep_ms) sleep_ms(a->sleep_ms);
  return a->calls == a->succeed_on ? 0 : 7;
}

static void test_retry(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "retry");
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));
  etcd_sd_balancer *b = NULL;
  CHECK_OK(etcd_sd_balancer_round_robin(i, &b));
  attempts a;
  memset(&a, 0, sizeof a);

  /* Empty set: NO_ENDPOINTS after max attempts (with short waits between). */
  CHECK_STATUS(etcd_sd_retry(b, 2, 10000, attempt, &a), ETCD_SD_ERR_NO_ENDPOINTS);
  CHECK(a.calls == 0);

  etcd_sd_registrar *r1 = put(c, p, "1", "r1");
  etcd_sd_registrar *r2 = put(c, p, "2", "r2");
  CHECK(r1 && r2);
  char buf[16];
  size_t len;
  int ready = 0;
  for (int n = 0; n < 500 && !ready; n++) {
    ready = etcd_sd_balancer_next(b, buf, sizeof buf, &len) == ETCD_SD_OK &&
            strcmp(buf, "r2") == 0;
    if (!ready) sleep_ms(10 * slow_factor());
  }
  CHECK(ready);

  /* Success on the second attempt, on the next instance. */
  memset(&a, 0, sizeof a);
  a.succeed_on = 2;
  CHECK_OK(etcd_sd_retry(b, 3, 10000, attempt, &a));
  CHECK(a.calls == 2);
  CHECK(strcmp(a.last, "r2") == 0);

  /* Every attempt fails: UNAVAILABLE, with every error in the text. */
  memset(&a, 0, sizeof a);
  CHECK_STATUS(etcd_sd_retry(b, 3, UINT64_MAX, attempt, &a), ETCD_SD_ERR_UNAVAILABLE);
  CHECK(a.calls == 3);
  char err[512];
  etcd_sd_last_error(err, sizeof err);
  CHECK(strstr(err, "code 7") != NULL);
  CHECK(strstr(err, "previously") != NULL);

  /* The deadline: TIMEOUT, a running attempt is not interrupted. */
  memset(&a, 0, sizeof a);
  a.sleep_ms = 60;
  CHECK_STATUS(etcd_sd_retry(b, 1000, 150, attempt, &a), ETCD_SD_ERR_TIMEOUT);
  CHECK(a.calls >= 2 && a.calls <= 4);
  memset(&a, 0, sizeof a);
  CHECK_STATUS(etcd_sd_retry(b, 3, 0, attempt, &a), ETCD_SD_ERR_TIMEOUT);
  CHECK(a.calls == 0);

  /* NULL arguments. */
  CHECK_STATUS(etcd_sd_retry(NULL, 1, 100, attempt, &a), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_retry(b, 1, 100, NULL, &a), ETCD_SD_ERR_INVALID_ARGUMENT);

  /* After stop: CLOSED. */
  etcd_sd_instancer_stop(i);
  memset(&a, 0, sizeof a);
  CHECK_STATUS(etcd_sd_retry(b, 3, 1000, attempt, &a), ETCD_SD_ERR_CLOSED);
  CHECK(a.calls == 0);
  CHECK_STATUS(etcd_sd_balancer_next(b, buf, sizeof buf, &len), ETCD_SD_ERR_CLOSED);

  etcd_sd_balancer_free(b);
  etcd_sd_instancer_free(i);
  etcd_sd_registrar_free(r1);
  etcd_sd_registrar_free(r2);
  etcd_sd_client_free(c);
}

/* ---------------------------------------------------------------- threads */

typedef struct shared_balancer {
  etcd_sd_balancer *b;
  int ok;
} shared_balancer;

static void *use_balancer(void *arg) {
  shared_balancer *s = (shared_balancer *)arg;
  char buf[64];
  size_t len;
  for (int n = 0; n < 200; n++) {
    if (etcd_sd_balancer_next(s->b, buf, sizeof buf, &len) == ETCD_SD_OK) s->ok++;
  }
  return NULL;
}

static void test_handles_from_many_threads(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "threads");
  etcd_sd_registrar *r = put(c, p, "t", "t");
  CHECK(r != NULL);
  etcd_sd_instancer *i = NULL;
  CHECK_OK(etcd_sd_instancer_new(c, p, &i));
  etcd_sd_balancer *b = NULL;
  CHECK_OK(etcd_sd_balancer_round_robin(i, &b));
  shared_balancer s[4];
  pthread_t t[4];
  for (int n = 0; n < 4; n++) {
    s[n].b = b;
    s[n].ok = 0;
    CHECK(pthread_create(&t[n], NULL, use_balancer, &s[n]) == 0);
  }
  for (int n = 0; n < 4; n++) pthread_join(t[n], NULL);
  for (int n = 0; n < 4; n++) CHECK(s[n].ok == 200);
  etcd_sd_balancer_free(b);
  etcd_sd_instancer_free(i);
  etcd_sd_registrar_free(r);
  etcd_sd_client_free(c);
}

/* ---------------------------------------------------------------- main */

typedef struct test_case {
  const char *name;
  void (*fn)(void);
} test_case;

/* ---------------------------------------------------------------- stats */

static int no_registrars(void *arg) {
  etcd_sd_stats st;
  if (etcd_sd_client_stats((const etcd_sd_client *)arg, &st, sizeof st) != ETCD_SD_OK) return 0;
  return st.registrars == 0 && st.registered == 0;
}

static void test_stats(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  etcd_sd_stats st;
  memset(&st, 0xAB, sizeof st);
  CHECK_STATUS(etcd_sd_client_stats(NULL, &st, sizeof st), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_client_stats(NULL, NULL, 0), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_client_stats(c, NULL, sizeof st), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(st.connected == 0xABABABABABABABABull); /* failures write nothing */

  /* A fresh client: connected, nothing else. */
  CHECK_OK(etcd_sd_client_stats(c, &st, sizeof st));
  CHECK(st.connected == 1);
  CHECK(st.registrars == 0 && st.registered == 0 && st.registrations == 0);
  CHECK(st.reregistrations == 0 && st.leases_lost == 0 && st.instancers == 0);
  CHECK(st.watch_resumes == 0 && st.rereads == 0 && st.events == 0);
  CHECK(st.callback_panics == 0);

  /* out_size 0 writes nothing (a NULL out is fine then). */
  memset(&st, 0xCD, sizeof st);
  CHECK_OK(etcd_sd_client_stats(c, &st, 0));
  CHECK(st.connected == 0xCDCDCDCDCDCDCDCDull && st.callback_panics == 0xCDCDCDCDCDCDCDCDull);
  CHECK_OK(etcd_sd_client_stats(c, NULL, 0));

  char p[160];
  prefix_for(p, sizeof p, "stats");
  etcd_sd_registrar *r = put(c, p, "svc", "svc:1");
  CHECK(r != NULL);
  CHECK_OK(etcd_sd_client_stats(c, &st, sizeof st));
  CHECK(st.connected == 1);
  CHECK(st.registrars == 1 && st.registered == 1 && st.registrations == 1);
  CHECK(st.reregistrations == 0 && st.leases_lost == 0);

  /* An older caller, whose struct has only the first three fields: exactly
     those bytes are written, the canary after them is untouched. */
  struct older_caller {
    struct {
      uint64_t connected;
      uint64_t registrars;
      uint64_t registered;
    } s;
    uint64_t canary[8];
  } old;
  memset(&old, 0xEE, sizeof old);
  CHECK_OK(etcd_sd_client_stats(c, (etcd_sd_stats *)(void *)&old.s, sizeof old.s));
  CHECK(old.s.connected == 1 && old.s.registrars == 1 && old.s.registered == 1);
  for (size_t i = 0; i < sizeof old.canary / sizeof old.canary[0]; i++) {
    CHECK(old.canary[i] == 0xEEEEEEEEEEEEEEEEull);
  }
  /* Not a whole number of fields: only those bytes. */
  unsigned char bytes[sizeof(etcd_sd_stats) + 16];
  memset(bytes, 0x77, sizeof bytes);
  CHECK_OK(etcd_sd_client_stats(c, (etcd_sd_stats *)(void *)bytes, 5));
  for (size_t i = 5; i < sizeof bytes; i++) CHECK(bytes[i] == 0x77);

  etcd_sd_registrar_free(r);
  CHECK(wait_for(no_registrars, c, 5000));
  CHECK_OK(etcd_sd_client_stats(c, &st, sizeof st));
  CHECK(st.registrations == 1); /* counters do not go down */
  etcd_sd_client_free(c);
}

/* ---------------------------------------------------------------- snapshot */

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

static void test_instancer_with_snapshot(void) {
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  char p[160];
  prefix_for(p, sizeof p, "snapshot");
  char dir[] = "/tmp/etcd-sd-c-snap-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char path[128];
  snprintf(path, sizeof path, "%s/svc.snapshot", dir);

  etcd_sd_instancer *i = (etcd_sd_instancer *)1;
  CHECK_STATUS(etcd_sd_instancer_new_with_snapshot(NULL, p, path, 0, &i),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(i == NULL);
  CHECK_STATUS(etcd_sd_instancer_new_with_snapshot(c, NULL, path, 0, &i),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_instancer_new_with_snapshot(c, p, path, 0, NULL),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_instancer_new_with_snapshot(c, "", path, 0, &i),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_instancer_new_with_snapshot(c, p, "", 0, &i),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(i == NULL);

  etcd_sd_registrar *r = put(c, p, "1", "snap-one");
  CHECK(r != NULL);
  /* etcd up: the first event is etcd's state; the file follows it. */
  CHECK_OK(etcd_sd_instancer_new_with_snapshot(c, p, path, 60000, &i));
  etcd_sd_subscription *sub = NULL;
  CHECK_OK(etcd_sd_instancer_subscribe(i, &sub));
  etcd_sd_event *ev = NULL;
  CHECK_OK(etcd_sd_subscription_recv(sub, 0, &ev));
  CHECK_OK(etcd_sd_event_error(ev));
  CHECK(etcd_sd_event_len(ev) == 1);
  CHECK(strcmp(etcd_sd_event_instance(ev, 0), "snap-one") == 0);
  etcd_sd_event_free(ev);
  int written = 0;
  for (int n = 0; n < 100 * slow_factor() && !written; n++) {
    written = file_contains(path, "\"snap-one\"");
    if (!written) sleep_ms(50);
  }
  CHECK(written);
  etcd_sd_registrar *r2 = put(c, p, "2", "snap-two");
  CHECK(r2 != NULL);
  written = 0;
  for (int n = 0; n < 100 * slow_factor() && !written; n++) {
    written = file_contains(path, "\"snap-two\"");
    if (!written) sleep_ms(50);
  }
  CHECK(written);
  etcd_sd_subscription_free(sub);
  etcd_sd_instancer_free(i);

  /* No file (NULL) and the default max age (0) are fine too. */
  i = NULL;
  CHECK_OK(etcd_sd_instancer_new_with_snapshot(c, p, NULL, 0, &i));
  CHECK_OK(etcd_sd_instancer_subscribe(i, &sub));
  CHECK_OK(etcd_sd_subscription_recv(sub, 0, &ev));
  CHECK(etcd_sd_event_len(ev) == 2);
  etcd_sd_event_free(ev);
  etcd_sd_subscription_free(sub);
  etcd_sd_instancer_free(i);
  /* Loaded from the file (etcd up, so etcd's state is what is seen). */
  CHECK_OK(etcd_sd_instancer_new_with_snapshot(c, p, path, 0, &i));
  etcd_sd_instancer_free(i);

  etcd_sd_registrar_free(r);
  etcd_sd_registrar_free(r2);
  etcd_sd_client_free(c);
  CHECK(remove(path) == 0);
  CHECK(rmdir(dir) == 0);
}

/* ---------------------------------------------------------------- naming */

static void test_naming_encode_decode(void) {
  char *value = NULL, *addr = NULL, *meta = NULL;
  /* Metadata kept as written, without the whitespace around it. */
  CHECK_OK(etcd_sd_naming_encode("10.0.0.1:8080", " {\"v\": \"1.2\", \"n\": 1.50e3} ", &value));
  CHECK(value && strcmp(value, "{\"Op\":0,\"Addr\":\"10.0.0.1:8080\",\"Metadata\":"
                               "{\"v\": \"1.2\", \"n\": 1.50e3}}") == 0);
  CHECK_OK(etcd_sd_naming_decode(value, &addr, &meta));
  CHECK(addr && strcmp(addr, "10.0.0.1:8080") == 0);
  CHECK(meta && strcmp(meta, "{\"v\": \"1.2\", \"n\": 1.50e3}") == 0);
  etcd_sd_string_free(value);
  etcd_sd_string_free(addr);
  etcd_sd_string_free(meta);

  /* No metadata: NULL in, "null" in the value, NULL out. */
  CHECK_OK(etcd_sd_naming_encode("h:1", NULL, &value));
  CHECK(value && strcmp(value, "{\"Op\":0,\"Addr\":\"h:1\",\"Metadata\":null}") == 0);
  meta = (char *)1;
  CHECK_OK(etcd_sd_naming_decode(value, &addr, &meta));
  CHECK(addr && strcmp(addr, "h:1") == 0);
  CHECK(meta == NULL);
  etcd_sd_string_free(value);
  etcd_sd_string_free(addr);

  /* What Go writes, with unknown fields and names in another case. */
  CHECK_OK(etcd_sd_naming_decode("{\"op\":0,\"addr\":\"caf\\u00e9:1\",\"Extra\":[1],"
                                 "\"Metadata\":\"m\"}",
                                 &addr, &meta));
  CHECK(addr && strcmp(addr, "caf\xc3\xa9:1") == 0);
  CHECK(meta && strcmp(meta, "\"m\"") == 0);
  etcd_sd_string_free(addr);
  etcd_sd_string_free(meta);

  /* Errors: a clear status and text, out-pointers NULL. */
  value = (char *)1;
  CHECK_STATUS(etcd_sd_naming_encode("h:1", "{not json", &value), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(value == NULL);
  char text[256];
  etcd_sd_last_error(text, sizeof text);
  CHECK(strstr(text, "not valid JSON") != NULL);
  /* JSON that Go's encoding/json cannot read (Go would skip the endpoint). */
  value = (char *)1;
  CHECK_STATUS(etcd_sd_naming_encode("h:1", "{\"n\": 1e400}", &value),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(value == NULL);
  etcd_sd_last_error(text, sizeof text);
  CHECK(strstr(text, "float64") != NULL);
  /* A value that is a naming endpoint but Go cannot read decodes anyway. */
  CHECK_OK(etcd_sd_naming_decode("{\"Addr\":\"a\",\"Metadata\":1e400}", &addr, &meta));
  CHECK(meta && strcmp(meta, "1e400") == 0);
  etcd_sd_string_free(addr);
  etcd_sd_string_free(meta);
  CHECK_STATUS(etcd_sd_naming_encode(NULL, NULL, &value), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_naming_encode("h:1", NULL, NULL), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(etcd_sd_naming_encode(BAD_UTF8, NULL, &value), ETCD_SD_ERR_INVALID_ARGUMENT);
  const char *bad[] = {"http://10.0.0.1:8080", "{\"Metadata\":{}}", "{\"Addr\":7}",
                       "{\"Op\":\"x\",\"Addr\":\"a\"}", "[]", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    addr = meta = (char *)1;
    CHECK_STATUS(etcd_sd_naming_decode(bad[i], &addr, &meta), ETCD_SD_ERR_INVALID_ARGUMENT);
    CHECK(addr == NULL && meta == NULL);
    etcd_sd_last_error(text, sizeof text);
    CHECK(strstr(text, "naming endpoint") != NULL);
  }
  meta = (char *)1;
  CHECK_STATUS(etcd_sd_naming_decode("{\"Addr\":\"a\"}", NULL, &meta),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(meta == NULL);
  CHECK_STATUS(etcd_sd_naming_decode(NULL, &addr, &meta), ETCD_SD_ERR_INVALID_ARGUMENT);
  etcd_sd_string_free(NULL);

  /* Registered and read back through etcd. */
  etcd_sd_client *c = NULL;
  CHECK_OK(connect_client(&c));
  if (!c) return;
  char prefix[160];
  prefix_for(prefix, sizeof prefix, "naming");
  CHECK_OK(etcd_sd_naming_encode("10.0.0.9:9", "{\"zone\":\"a\"}", &value));
  etcd_sd_registrar *r = put(c, prefix, "10.0.0.9:9", value);
  CHECK(r != NULL);
  etcd_sd_string_free(value);
  etcd_sd_strings *s = NULL;
  CHECK_OK(etcd_sd_client_get_entries(c, prefix, &s));
  CHECK(etcd_sd_strings_len(s) == 1);
  if (etcd_sd_strings_len(s) == 1) {
    CHECK_OK(etcd_sd_naming_decode(etcd_sd_strings_get(s, 0), &addr, &meta));
    CHECK(addr && strcmp(addr, "10.0.0.9:9") == 0);
    CHECK(meta && strcmp(meta, "{\"zone\":\"a\"}") == 0);
    etcd_sd_string_free(addr);
    etcd_sd_string_free(meta);
  }
  etcd_sd_strings_free(s);
  etcd_sd_registrar_free(r);
  etcd_sd_client_free(c);
}

int main(void) {
  g_endpoint = getenv("ETCD_SD_TEST_ENDPOINT");
  if (!g_endpoint || !*g_endpoint) {
    fprintf(stderr, "set ETCD_SD_TEST_ENDPOINT to host:port of a running etcd\n");
    return 2;
  }
  const char *base = getenv("ETCD_SD_TEST_PREFIX");
  snprintf(g_prefix, sizeof g_prefix, "%s", base ? base : "/etcd-sd-c-test/");

  const test_case tests[] = {
      {"version_and_status_str", test_version_and_status_str},
      {"last_error", test_last_error},
      {"last_error_is_per_thread", test_last_error_is_per_thread},
      {"client_new_errors", test_client_new_errors},
      {"client_and_entries", test_client_and_entries},
      {"registrar", test_registrar},
      {"pause_and_resume", test_pause_and_resume},
      {"lazy_client", test_lazy_client},
      {"instancer_and_subscription", test_instancer_and_subscription},
      {"callbacks_order_and_drop_once", test_callbacks_order_and_drop_once},
      {"callback_removes_itself", test_callback_removes_itself},
      {"callback_stops_and_frees_its_instancer", test_callback_stops_and_frees_its_instancer},
      {"free_with_live_callbacks_and_subscriptions",
       test_free_with_live_callbacks_and_subscriptions},
      {"objects_outlive_the_client", test_objects_outlive_the_client},
      {"balancers", test_balancers},
      {"retry", test_retry},
      {"handles_from_many_threads", test_handles_from_many_threads},
      {"stats", test_stats},
      {"instancer_with_snapshot", test_instancer_with_snapshot},
      {"naming_encode_decode", test_naming_encode_decode},
  };
  const char *only = getenv("ETCD_SD_TEST_ONLY");
  int passed = 0, failed = 0;
  for (size_t n = 0; n < sizeof tests / sizeof tests[0]; n++) {
    if (only && strcmp(only, tests[n].name) != 0) continue;
    int before = g_failed_checks;
    tests[n].fn();
    if (g_failed_checks == before) {
      printf("ok - %s\n", tests[n].name);
      passed++;
    } else {
      printf("FAILED - %s\n", tests[n].name);
      failed++;
    }
    fflush(stdout);
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
