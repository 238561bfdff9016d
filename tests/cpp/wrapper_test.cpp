// Tests of the C++ wrapper (bindings/cpp/etcd_sd.hpp) against a real etcd.
// Environment as tests/c/api_test.c: ETCD_SD_TEST_ENDPOINT, ETCD_SD_TEST_PREFIX.
#include "etcd_sd.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <unistd.h>  // rmdir

using namespace std::chrono_literals;

namespace {

int g_failed = 0;
std::string g_endpoint;
std::string g_prefix;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      g_failed++;                                                            \
      return;                                                                \
    }                                                                        \
  } while (0)

// Runs `f`, which must throw etcd_sd::Error with `status`.
#define CHECK_THROWS(expr, want)                                             \
  do {                                                                       \
    bool thrown_ = false;                                                    \
    try {                                                                    \
      (void)(expr);                                                          \
    } catch (const etcd_sd::Error &e_) {                                     \
      thrown_ = true;                                                        \
      if (e_.status() != (want)) {                                           \
        std::fprintf(stderr, "%s:%d: %s threw status %d (%s), want %d\n", __FILE__, \
                     __LINE__, #expr, (int)e_.status(), e_.what(), (int)(want)); \
        g_failed++;                                                          \
        return;                                                              \
      }                                                                      \
    }                                                                        \
    if (!thrown_) {                                                          \
      std::fprintf(stderr, "%s:%d: %s did not throw\n", __FILE__, __LINE__, #expr); \
      g_failed++;                                                            \
      return;                                                                \
    }                                                                        \
  } while (0)

template <class F>
bool wait_until(F f, std::chrono::milliseconds timeout = 10s) {
  for (auto waited = 0ms; waited < timeout; waited += 5ms) {
    if (f()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return f();
}

std::string prefix(const char *name) { return g_prefix + name + "/"; }

etcd_sd::Client connect() { return etcd_sd::Client({g_endpoint}); }

static_assert(!std::is_copy_constructible_v<etcd_sd::Client>, "move-only");
static_assert(std::is_nothrow_move_constructible_v<etcd_sd::Client>, "movable");
static_assert(!std::is_copy_constructible_v<etcd_sd::Registrar>, "move-only");
static_assert(!std::is_copy_constructible_v<etcd_sd::Instancer>, "move-only");
static_assert(!std::is_copy_constructible_v<etcd_sd::Subscription>, "move-only");
static_assert(!std::is_copy_constructible_v<etcd_sd::Balancer>, "move-only");
static_assert(!std::is_copy_constructible_v<etcd_sd::Event>, "move-only");
static_assert(std::is_base_of_v<std::runtime_error, etcd_sd::Error>, "an exception");

void test_errors() {
  CHECK(etcd_sd::version() == ETCD_SD_VERSION);
  CHECK_THROWS(etcd_sd::Client(std::vector<std::string>{}), ETCD_SD_ERR_INVALID_ARGUMENT);
  try {
    etcd_sd::Client c({"http://"});
    CHECK(false);
  } catch (const etcd_sd::Error &e) {
    CHECK(e.status() == ETCD_SD_ERR_INVALID_ARGUMENT);
    CHECK(std::string(e.what()).find("http://") != std::string::npos);
  }
  etcd_sd::ClientOptions o;
  o.dial_timeout = 300ms;
  try {
    etcd_sd::Client c({"127.0.0.1:1"}, o);
    CHECK(false);
  } catch (const etcd_sd::Error &e) {
    CHECK(e.status() == ETCD_SD_ERR_UNAVAILABLE || e.status() == ETCD_SD_ERR_TIMEOUT);
    CHECK(std::strlen(e.what()) > 0);
  }
  etcd_sd::Client c = connect();
  CHECK_THROWS(etcd_sd::Registrar(c, "", "v"), ETCD_SD_ERR_NO_KEY);
  CHECK_THROWS(etcd_sd::Registrar(c, "/k", ""), ETCD_SD_ERR_NO_VALUE);
  CHECK_THROWS(etcd_sd::Instancer(c, ""), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(c.get_entries(""), ETCD_SD_ERR_INVALID_ARGUMENT);
}

void test_raii_registrar_and_moves() {
  etcd_sd::Client c = connect();
  std::string p = prefix("raii");
  {
    etcd_sd::Registrar r(c, p + "a", "value-a", 1s, 5s);
    r.register_service();
    CHECK(r.lease_id() != 0);
    CHECK(c.get_entries(p) == std::vector<std::string>{"value-a"});
    etcd_sd::Registrar moved(std::move(r));  // the moved-from one frees nothing
    CHECK(moved.lease_id() != 0);
    CHECK(r.get() == nullptr);
    etcd_sd::Registrar other(c, p + "b", "value-b");
    other.register_service();
    CHECK(c.get_entries(p).size() == 2);
    other = std::move(moved);  // frees (deregisters) "b", takes "a"
    CHECK(c.get_entries(p) == std::vector<std::string>{"value-a"});
    other.deregister_service();
    other.deregister_service();
    CHECK(c.get_entries(p).empty());
    other.register_service();
  }  // destructor deregisters
  CHECK(c.get_entries(p).empty());
  etcd_sd::Client c2 = std::move(c);
  CHECK(c2.get_entries(p).empty());
}

void test_callbacks() {
  etcd_sd::Client c = connect();
  std::string p = prefix("callbacks");
  etcd_sd::Instancer inst(c, p);
  std::mutex mu;
  std::vector<std::vector<std::string>> seen;
  auto token = std::make_shared<int>(7);  // released with the callback
  std::atomic<int> thrown{0}, handled{0}, bad{0};
  auto id = inst.on_update(
      [&, token](const etcd_sd::Event &ev) {
        std::lock_guard<std::mutex> lock(mu);
        if (ev.status() != ETCD_SD_OK || ev.error()) bad++;
        seen.push_back(ev.instances());
        if (seen.size() == 1) {
          thrown++;
          throw std::runtime_error("thrown inside a callback");  // must not crash
        }
      },
      [&](std::exception_ptr) { handled++; });
  CHECK(id != 0);
  CHECK(token.use_count() == 2);
  CHECK(wait_until([&] { return thrown.load() == 1; }));
  etcd_sd::Registrar r(c, p + "x", "x");
  r.register_service();
  CHECK(wait_until([&] {
    std::lock_guard<std::mutex> lock(mu);
    return seen.size() >= 2 && seen.back() == std::vector<std::string>{"x"};
  }));
  CHECK(handled.load() == 1);
  CHECK(bad.load() == 0);
  {
    std::lock_guard<std::mutex> lock(mu);
    CHECK(seen.front().empty());
  }
  inst.remove_callback(id);
  CHECK(wait_until([&] { return token.use_count() == 1; }));  // the std::function is gone

  // A callback that throws something that is not a std::exception, without
  // an error handler; and one released by the instancer's destructor.
  auto token2 = std::make_shared<int>(8);
  {
    etcd_sd::Instancer inst2(c, p);
    std::atomic<int> calls{0};
    inst2.on_update([&calls, token2](const etcd_sd::Event &ev) {
      calls++;
      for (std::string_view s : ev) (void)s;
      throw 42;
    });
    CHECK(wait_until([&] { return calls.load() >= 1; }));
    CHECK(token2.use_count() == 2);
  }
  CHECK(wait_until([&] { return token2.use_count() == 1; }));

  inst.stop();
  CHECK_THROWS(inst.on_update([](const etcd_sd::Event &) {}), ETCD_SD_ERR_CLOSED);
  CHECK_THROWS(inst.subscribe(), ETCD_SD_ERR_CLOSED);
}

void test_subscription() {
  etcd_sd::Client c = connect();
  std::string p = prefix("subscription");
  etcd_sd::Registrar r(c, p + "1", "one");
  r.register_service();
  std::optional<etcd_sd::Subscription> sub;
  {
    etcd_sd::Instancer inst(c, p);
    sub.emplace(inst.subscribe());
    auto ev = sub->recv(5s);
    CHECK(ev.has_value());
    CHECK(ev->size() == 1);
    CHECK((*ev)[0] == "one");
    CHECK(ev->at(0) == "one");
    CHECK((*ev)[1].empty());
    bool out_of_range = false;
    try {
      (void)ev->at(1);
    } catch (const std::out_of_range &) {
      out_of_range = true;
    }
    CHECK(out_of_range);
  }  // the instancer is destroyed: the subscription ends
  bool closed = false;
  for (int n = 0; n < 20 && !closed; n++) {
    try {
      auto ev = sub->recv(5s);
      CHECK(ev.has_value());
    } catch (const etcd_sd::Error &e) {
      CHECK(e.status() == ETCD_SD_ERR_CLOSED);
      closed = true;
    }
  }
  CHECK(closed);
  CHECK_THROWS(sub->try_recv(), ETCD_SD_ERR_CLOSED);
  CHECK_THROWS(sub->recv(), ETCD_SD_ERR_CLOSED);

  etcd_sd::Instancer inst(c, p);
  etcd_sd::Subscription s = inst.subscribe();
  auto first = s.try_recv();
  CHECK(first && first->instances() == std::vector<std::string>{"one"});
  CHECK(!s.try_recv());
  CHECK(!s.recv(20ms));
  etcd_sd::Event moved = std::move(*first);
  CHECK(moved.size() == 1);
  CHECK(first->get() == nullptr);
}

void test_balancer_and_retry() {
  etcd_sd::Client c = connect();
  std::string p = prefix("balancer");
  etcd_sd::Instancer inst(c, p);
  etcd_sd::Balancer rr = inst.round_robin();
  CHECK_THROWS(rr.next(), ETCD_SD_ERR_NO_ENDPOINTS);
  std::string long_value(1000, 'z');  // longer than next()'s first buffer
  etcd_sd::Registrar a(c, p + "a", "a");
  etcd_sd::Registrar b(c, p + "b", long_value);
  a.register_service();
  b.register_service();
  CHECK(wait_until([&] {
    try {
      return rr.next() == long_value;
    } catch (const etcd_sd::Error &) {
      return false;
    }
  }));
  CHECK(rr.next() == "a");
  CHECK(rr.next() == long_value);
  CHECK(rr.next() == "a");

  etcd_sd::Balancer r1 = inst.random(9), r2 = inst.random(9);
  for (int n = 0; n < 10; n++) CHECK(r1.next() == r2.next());

  int calls = 0;
  rr.retry(3, 5s, [&](std::string_view instance) {
    calls++;
    if (calls == 1) throw std::runtime_error("first attempt throws");
    return !instance.empty();
  });
  CHECK(calls == 2);
  calls = 0;
  try {
    rr.retry(2, 5s, [&](std::string_view) -> bool {
      calls++;
      throw std::runtime_error("always throws");
    });
    CHECK(false);
  } catch (const etcd_sd::Error &e) {
    CHECK(e.status() == ETCD_SD_ERR_UNAVAILABLE);
    CHECK(std::string(e.what()).find("always throws") != std::string::npos);
  }
  CHECK(calls == 2);
  CHECK_THROWS(rr.retry(5, 0ms, [](std::string_view) { return true; }), ETCD_SD_ERR_TIMEOUT);
  inst.stop();
  CHECK_THROWS(rr.next(), ETCD_SD_ERR_CLOSED);
}

}  // namespace

void test_stats() {
  etcd_sd::Client c = connect();
  etcd_sd_stats s = c.stats();
  CHECK(s.connected == 1);
  CHECK(s.registrars == 0 && s.registrations == 0 && s.instancers == 0 && s.events == 0);
  etcd_sd::Registrar r(c, prefix("stats") + "a", "value-a", 1s, 5s);
  r.register_service();
  s = c.stats();
  CHECK(s.registrars == 1 && s.registered == 1 && s.registrations == 1);
}

void test_lazy_client_and_drain() {
  using S = etcd_sd::RegistrationState;
  etcd_sd::ClientOptions o;
  o.request_timeout = 1s;
  CHECK_THROWS(etcd_sd::Client::connect_lazy(std::vector<std::string>{}),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(etcd_sd::Client::connect_lazy({"host:notaport"}), ETCD_SD_ERR_INVALID_ARGUMENT);
  {
    // Nothing listens on port 1: made at once; calls throw in time.
    etcd_sd::Client down = etcd_sd::Client::connect_lazy({"127.0.0.1:1"}, o);
    CHECK(down.stats().connected == 0);
    try {
      (void)down.get_entries("/x/");
      CHECK(false);
    } catch (const etcd_sd::Error &e) {
      CHECK(e.status() == ETCD_SD_ERR_UNAVAILABLE || e.status() == ETCD_SD_ERR_TIMEOUT);
    }
    etcd_sd::Registrar r(down, "/x/svc", "v");
    try {
      r.register_service();
      CHECK(false);
    } catch (const etcd_sd::Error &e) {
      CHECK(e.status() == ETCD_SD_ERR_UNAVAILABLE || e.status() == ETCD_SD_ERR_TIMEOUT);
    }
    CHECK(r.state() == S::Registering);
    r.pause();
    CHECK(r.state() == S::Paused);
  }
  // With etcd up: a client like any other; pause and resume.
  etcd_sd::Client c = etcd_sd::Client::connect_lazy({g_endpoint});
  std::string p = prefix("drain");
  etcd_sd::Registrar r(c, p + "a", "value-a", 500ms, 2s);
  CHECK(r.state() == S::Unregistered);
  r.register_service();
  CHECK(r.state() == S::Registered);
  std::int64_t lease = r.lease_id();
  CHECK(c.get_entries(p) == std::vector<std::string>{"value-a"});
  r.pause();
  CHECK(r.state() == S::Paused);
  CHECK(r.lease_id() == 0);
  CHECK(c.get_entries(p).empty());
  r.pause();  // twice: fine
  CHECK(c.stats().registered == 0);
  r.resume();
  CHECK(r.state() == S::Registered);
  CHECK(r.lease_id() != 0 && r.lease_id() != lease);
  CHECK(c.get_entries(p) == std::vector<std::string>{"value-a"});
  r.pause();
  r.deregister_service();  // after pause: fine
  CHECK(r.state() == S::Deregistered);
  CHECK(c.get_entries(p).empty());
}

void test_instancer_with_snapshot() {
  etcd_sd::Client c = connect();
  char dir[] = "/tmp/etcd-sd-cpp-snap-XXXXXX";
  CHECK(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/svc.snapshot";
  std::string p = prefix("snapshot");
  CHECK_THROWS(etcd_sd::Instancer(c, "", etcd_sd::InstancerOptions{path, 0ms}),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  etcd_sd::Registrar r(c, p + "a", "snap-a", 1s, 5s);
  r.register_service();
  {
    etcd_sd::Instancer inst(c, p, etcd_sd::InstancerOptions{path, 1h});
    etcd_sd::Subscription sub = inst.subscribe();
    std::optional<etcd_sd::Event> first = sub.recv(1s);
    CHECK(first && first->status() == ETCD_SD_OK && first->size() == 1);
    CHECK(wait_until([&] {
      std::FILE *f = std::fopen(path.c_str(), "rb");
      if (!f) return false;
      char buf[4096];
      std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
      std::fclose(f);
      buf[n] = '\0';
      return std::strstr(buf, "\"snap-a\"") != nullptr;
    }));
  }
  {
    etcd_sd::Instancer none(c, p, etcd_sd::InstancerOptions{});
    CHECK(none.subscribe().recv(1s)->size() == 1);
  }
  CHECK(std::remove(path.c_str()) == 0);
  CHECK(rmdir(dir) == 0);
}

void test_naming() {
  namespace naming = etcd_sd::naming;
  naming::Endpoint e{"10.0.0.1:8080", std::string(" {\"v\": [1, 2.50]} ")};
  std::string value = naming::encode(e);
  CHECK(value == "{\"Op\":0,\"Addr\":\"10.0.0.1:8080\",\"Metadata\":{\"v\": [1, 2.50]}}");
  naming::Endpoint back = naming::decode(value);
  CHECK(back.addr == "10.0.0.1:8080");
  CHECK(back.metadata && *back.metadata == "{\"v\": [1, 2.50]}");
  naming::Endpoint plain{"h:1", std::nullopt};
  CHECK(naming::decode(naming::encode(plain)) == plain);
  CHECK_THROWS(naming::encode(naming::Endpoint{"h:1", std::string("{bad")}),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(naming::decode("http://10.0.0.1:8080"), ETCD_SD_ERR_INVALID_ARGUMENT);
  // A NUL inside a std::string is refused, not silently cut at.
  using namespace std::string_literals;
  CHECK_THROWS(naming::encode(naming::Endpoint{"a:1\0b"s, std::nullopt}),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(naming::encode(naming::Endpoint{"a:1", "{}\0{bad"s}), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(naming::decode("{\"Addr\":\"a\"}\0junk"s), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(naming::encode(naming::Endpoint{"a:1", std::string("1e400")}),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  try {
    naming::decode("{\"Metadata\":1}");
    CHECK(false);
  } catch (const etcd_sd::Error &err) {
    CHECK(std::string(err.what()).find("Addr") != std::string::npos);
  }
  // Registered, found, decoded.
  etcd_sd::Client c = connect();
  std::string p = prefix("naming");
  etcd_sd::Registrar r(c, p + "a", naming::encode(naming::Endpoint{"10.0.0.2:1", std::string("\"z\"")}));
  r.register_service();
  auto values = c.get_entries(p);
  CHECK(values.size() == 1);
  CHECK(naming::decode(values[0]) == (naming::Endpoint{"10.0.0.2:1", std::string("\"z\"")}));
}

void test_nul_in_strings_is_refused() {
  using namespace std::string_literals;
  etcd_sd::Client c = connect();
  std::string p = prefix("nul");
  // A NUL would cut the C string: refused, never a silently shorter key.
  CHECK_THROWS(etcd_sd::Registrar(c, p + "a\0b"s, "v"), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(etcd_sd::Registrar(c, p + "a", "v\0w"s), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS((void)c.get_entries(p + "\0"s), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(etcd_sd::Instancer(c, p + "\0x"s), ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK_THROWS(etcd_sd::Client(std::vector<std::string>{"127.0.0.1:2379\0junk"s}),
               ETCD_SD_ERR_INVALID_ARGUMENT);
  CHECK(c.get_entries(p).empty());
}

int main() {
  const char *ep = std::getenv("ETCD_SD_TEST_ENDPOINT");
  if (!ep || !*ep) {
    std::fprintf(stderr, "set ETCD_SD_TEST_ENDPOINT\n");
    return 2;
  }
  g_endpoint = ep;
  const char *p = std::getenv("ETCD_SD_TEST_PREFIX");
  g_prefix = p ? p : "/etcd-sd-cpp-test/";
  struct {
    const char *name;
    void (*fn)();
  } tests[] = {
      {"errors", test_errors},
      {"raii_registrar_and_moves", test_raii_registrar_and_moves},
      {"callbacks", test_callbacks},
      {"subscription", test_subscription},
      {"balancer_and_retry", test_balancer_and_retry},
      {"stats", test_stats},
      {"lazy_client_and_drain", test_lazy_client_and_drain},
      {"instancer_with_snapshot", test_instancer_with_snapshot},
      {"naming", test_naming},
      {"nul_in_strings_is_refused", test_nul_in_strings_is_refused},
  };
  int passed = 0, failed = 0;
  for (auto &t : tests) {
    int before = g_failed;
    try {
      t.fn();
    } catch (const std::exception &e) {
      std::fprintf(stderr, "%s: unexpected exception: %s\n", t.name, e.what());
      g_failed++;
    }
    if (g_failed == before) {
      std::printf("ok - %s\n", t.name);
      passed++;
    } else {
      std::printf("FAILED - %s\n", t.name);
      failed++;
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
