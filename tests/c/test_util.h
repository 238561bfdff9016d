/*
 * A tiny test framework for the C API tests: CHECK macros that report the
 * line and fail the current test, bounded waits, and a thread-safe counter
 * for callbacks. Valid C11 and C++17 (the suite is built as both).
 */
#ifndef ETCD_SD_TEST_UTIL_H
#define ETCD_SD_TEST_UTIL_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd_sd.h"

static int g_failed_checks = 0;

/* Fails the current test (returns from it) when `cond` is false. */
#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      char err_[512];                                                        \
      etcd_sd_last_error(err_, sizeof err_);                                 \
      fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, \
              __LINE__, #cond, err_);                                        \
      g_failed_checks++;                                                     \
      return;                                                                \
    }                                                                        \
  } while (0)

/* CHECK that a call returns the expected status. */
#define CHECK_STATUS(call, want)                                             \
  do {                                                                       \
    etcd_sd_status got_ = (call);                                            \
    if (got_ != (want)) {                                                    \
      char err_[512];                                                        \
      etcd_sd_last_error(err_, sizeof err_);                                 \
      fprintf(stderr, "%s:%d: %s returned %d (%s), want %d (%s); last error: %s\n", \
              __FILE__, __LINE__, #call, (int)got_, etcd_sd_status_str(got_),   \
              (int)(want), etcd_sd_status_str(want), err_);                  \
      g_failed_checks++;                                                     \
      return;                                                                \
    }                                                                        \
  } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, ETCD_SD_OK)

/* Multiplies every wait, for runs under valgrind (ETCD_SD_TEST_SLOW=N). */
static int slow_factor(void) {
  const char *s = getenv("ETCD_SD_TEST_SLOW");
  int n = s ? atoi(s) : 1;
  return n > 0 ? n : 1;
}

static void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  nanosleep(&ts, NULL);
}

/* Polls `pred(arg)` every 5 ms for at most `timeout_ms` (times the slow
   factor); returns its last answer. Bounded in iterations. */
static int wait_for(int (*pred)(void *), void *arg, long timeout_ms) {
  long rounds = timeout_ms * slow_factor() / 5 + 1;
  for (long i = 0; i < rounds; i++) {
    if (pred(arg)) return 1;
    sleep_ms(5);
  }
  return pred(arg);
}

/* A callback's context: counts calls and drops, checks ordering rules. */
typedef struct counter {
  pthread_mutex_t mu;
  int calls;
  int drops;
  int in_call;
  int violations; /* concurrent call, call after drop, double drop */
  size_t lens[64];
  int n_lens;
  int last_error_status;
  /* Optional actions from inside the call. */
  etcd_sd_instancer *instancer;
  uint64_t id; /* set once known */
  int remove_on_call; /* remove itself on the call with this number */
  int stop_on_call;   /* stop the instancer on the call with this number */
  int free_on_call;   /* free the instancer on the call with this number */
  etcd_sd_status action_status;
  int try_free_event; /* call etcd_sd_event_free on the lent event */
} counter;

static void counter_init(counter *c) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  c->action_status = -1;
}

static void counter_destroy(counter *c) { pthread_mutex_destroy(&c->mu); }

static int counter_get(counter *c, int *field) {
  pthread_mutex_lock(&c->mu);
  int v = *field;
  pthread_mutex_unlock(&c->mu);
  return v;
}

static void on_event(const etcd_sd_event *ev, void *ctx) {
  counter *c = (counter *)ctx;
  pthread_mutex_lock(&c->mu);
  if (c->in_call || c->drops) c->violations++;
  c->in_call = 1;
  c->calls++;
  int n = c->calls;
  if (c->n_lens < 64) c->lens[c->n_lens++] = etcd_sd_event_len(ev);
  c->last_error_status = etcd_sd_event_error(ev);
  /* Every instance string is readable during the call. */
  for (size_t i = 0; i < etcd_sd_event_len(ev); i++) {
    if (etcd_sd_event_instance(ev, i) == NULL) c->violations++;
  }
  if (etcd_sd_event_instance(ev, etcd_sd_event_len(ev)) != NULL) c->violations++;
  int remove = c->remove_on_call == n && c->id != 0;
  int stop = c->stop_on_call == n;
  int do_free = c->free_on_call == n;
  int free_event = c->try_free_event;
  etcd_sd_instancer *inst = c->instancer;
  uint64_t id = c->id;
  pthread_mutex_unlock(&c->mu);

  /* Actions run without our lock: they may wait for nothing but us. */
  etcd_sd_status st = -1;
  if (remove) st = etcd_sd_instancer_remove_callback(inst, id);
  if (stop) etcd_sd_instancer_stop(inst);
  if (do_free) etcd_sd_instancer_free(inst);
  if (free_event) etcd_sd_event_free((etcd_sd_event *)ev); /* ignored: lent */

  pthread_mutex_lock(&c->mu);
  if (remove) c->action_status = st;
  if (stop || do_free) c->action_status = ETCD_SD_OK;
  c->in_call = 0;
  pthread_mutex_unlock(&c->mu);
}

static void on_drop(void *ctx) {
  counter *c = (counter *)ctx;
  pthread_mutex_lock(&c->mu);
  if (c->in_call || c->drops) c->violations++;
  c->drops++;
  pthread_mutex_unlock(&c->mu);
}

typedef struct wait_arg {
  counter *c;
  int *field;
  int at_least;
} wait_arg;

static int pred_at_least(void *p) {
  wait_arg *w = (wait_arg *)p;
  return counter_get(w->c, w->field) >= w->at_least;
}

/* Waits until *field >= n; returns whether it got there. */
static int wait_count(counter *c, int *field, int n, long timeout_ms) {
  wait_arg w;
  w.c = c;
  w.field = field;
  w.at_least = n;
  return wait_for(pred_at_least, &w, timeout_ms);
}

#endif /* ETCD_SD_TEST_UTIL_H */
