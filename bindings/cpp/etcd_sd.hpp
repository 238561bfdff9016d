// etcd-sd: C++17 RAII wrapper over the C API (include/etcd_sd.h).
//
// Header-only. Every class owns one C handle, is move-only, and frees its
// handle in its destructor (a moved-from object holds none). Failures throw
// etcd_sd::Error, whose status() is the C status and whose what() is the
// library's error text. Callbacks are std::function objects; no C++
// exception ever crosses into the library (each call from the library goes
// through a noexcept trampoline that catches everything).
//
// Thread-safety is that of the C handles: Client, Registrar, Instancer,
// Subscription and Balancer may be used from several threads at once; do
// not destroy or move one while another thread uses it.
//
//   #include <etcd_sd.hpp>
//   etcd_sd::Client client({"127.0.0.1:2379"});
//   etcd_sd::Registrar me(client, "/services/foo/10.0.0.1:8080", "http://10.0.0.1:8080");
//   me.register_service();
//   etcd_sd::Instancer bars(client, "/services/bar/");
//   auto id = bars.on_update([](const etcd_sd::Event& ev) {
//     for (std::string_view instance : ev) std::cout << instance << "\n";
//   });
//
// SPDX-License-Identifier: Apache-2.0
#ifndef ETCD_SD_HPP
#define ETCD_SD_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "etcd_sd.h"

namespace etcd_sd {

/// A C status code (ETCD_SD_OK, ETCD_SD_ERR_*).
using Status = etcd_sd_status;

/// The version of the library in use, e.g. "0.1.0".
inline std::string_view version() noexcept { return etcd_sd_version(); }

/// What every failing call throws: the C status and the library's message.
class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}

  /// The C status, e.g. ETCD_SD_ERR_TIMEOUT.
  Status status() const noexcept { return status_; }

  /// The error for `status` with this thread's last error text (falls back
  /// to the status's description when there is none).
  static Error last(Status status) {
    std::string text(etcd_sd_last_error(nullptr, 0), '\0');
    if (!text.empty()) {
      std::size_t n = etcd_sd_last_error(&text[0], text.size() + 1);
      text.resize(n < text.size() ? n : text.size());
    } else {
      text = etcd_sd_status_str(status);
    }
    return Error(status, text);
  }

 private:
  Status status_;
};

/// A time span in milliseconds as the C API takes it: negative means 0,
/// milliseconds::max() means "no limit" (UINT64_MAX).
inline std::uint64_t to_c_millis(std::chrono::milliseconds d) noexcept {
  if (d == std::chrono::milliseconds::max()) return UINT64_MAX;
  return d.count() < 0 ? 0 : static_cast<std::uint64_t>(d.count());
}

namespace detail {

inline void check(Status s) {
  if (s != ETCD_SD_OK) throw Error::last(s);
}

/// `s` as a C string, or Error (ETCD_SD_ERR_INVALID_ARGUMENT) when it holds
/// a NUL character, which the C string would silently cut it at.
inline const char *c_text(const std::string &s, const char *what) {
  if (s.find('\0') != std::string::npos) {
    throw Error(ETCD_SD_ERR_INVALID_ARGUMENT,
                std::string("invalid argument: ") + what + " holds a NUL character");
  }
  return s.c_str();
}

template <class T, void (*Free)(T *)>
struct Deleter {
  void operator()(T *p) const noexcept { Free(p); }
};

template <class T, void (*Free)(T *)>
using Handle = std::unique_ptr<T, Deleter<T, Free>>;

}  // namespace detail

class Instancer;
class Subscription;

/// One discovery update: the sorted, de-duplicated instances under the
/// prefix, and an error while etcd cannot be watched (the instances are then
/// the last good set). Iterating yields std::string_view.
///
/// An Event from Subscription owns its C event. The Event a callback gets is
/// lent: it and its strings are valid only during the call; copy what you
/// need (instances() makes owned copies).
class Event {
 public:
  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = std::string_view;
    using difference_type = std::ptrdiff_t;
    using pointer = const std::string_view *;
    using reference = std::string_view;

    const_iterator() = default;
    std::string_view operator*() const { return (*event_)[index_]; }
    const_iterator &operator++() {
      ++index_;
      return *this;
    }
    const_iterator operator++(int) {
      const_iterator old = *this;
      ++index_;
      return old;
    }
    bool operator==(const const_iterator &o) const { return index_ == o.index_; }
    bool operator!=(const const_iterator &o) const { return index_ != o.index_; }

   private:
    friend class Event;
    const_iterator(const Event *event, std::size_t index) : event_(event), index_(index) {}
    const Event *event_ = nullptr;
    std::size_t index_ = 0;
  };

  Event(Event &&o) noexcept : owned_(std::move(o.owned_)), ev_(o.ev_) { o.ev_ = nullptr; }
  Event &operator=(Event &&o) noexcept {
    owned_ = std::move(o.owned_);
    ev_ = o.ev_;
    o.ev_ = nullptr;
    return *this;
  }
  Event(const Event &) = delete;
  Event &operator=(const Event &) = delete;
  ~Event() = default;

  /// Number of instances.
  std::size_t size() const noexcept { return etcd_sd_event_len(ev_); }
  bool empty() const noexcept { return size() == 0; }

  /// The i-th instance, in sorted order; "" when out of range.
  std::string_view operator[](std::size_t i) const noexcept {
    const char *s = etcd_sd_event_instance(ev_, i);
    return s ? std::string_view(s) : std::string_view();
  }

  /// The i-th instance; throws std::out_of_range when out of range.
  std::string_view at(std::size_t i) const {
    const char *s = etcd_sd_event_instance(ev_, i);
    if (!s) throw std::out_of_range("etcd_sd::Event::at");
    return s;
  }

  const_iterator begin() const noexcept { return const_iterator(this, 0); }
  const_iterator end() const noexcept { return const_iterator(this, size()); }

  /// Owned copies of the instances.
  std::vector<std::string> instances() const {
    std::vector<std::string> out;
    out.reserve(size());
    for (std::string_view s : *this) out.emplace_back(s);
    return out;
  }

  /// ETCD_SD_OK, or the status of the event's error.
  Status status() const noexcept { return etcd_sd_event_error(ev_); }

  /// The event's error (ETCD_SD_ERR_UNAVAILABLE while etcd is unreachable,
  /// ...), or nullopt when the instances are current.
  std::optional<Error> error() const {
    Status s = etcd_sd_event_error(ev_);
    if (s == ETCD_SD_OK) return std::nullopt;
    return Error::last(s);
  }

  /// The C event (valid as long as this object).
  const etcd_sd_event *get() const noexcept { return ev_; }

 private:
  friend class Subscription;
  friend class Instancer;
  explicit Event(etcd_sd_event *owned) : owned_(owned), ev_(owned) {}
  static Event lend(const etcd_sd_event *ev) noexcept { return Event(ev, 0); }
  Event(const etcd_sd_event *lent, int) noexcept : ev_(lent) {}

  detail::Handle<etcd_sd_event, etcd_sd_event_free> owned_;
  const etcd_sd_event *ev_ = nullptr;
};

/// Options for Client: TLS files, credentials, timeouts (0 = default).
struct ClientOptions {
  std::optional<std::string> cert, key, ca_cert;
  std::optional<std::string> username, password;
  std::chrono::milliseconds dial_timeout{0};
  std::chrono::milliseconds dial_keep_alive{0};
  std::chrono::milliseconds request_timeout{0};
};

/// A connection to etcd. Registrars, Instancers and Balancers made from it
/// keep working after it is destroyed.
class Client {
 public:
  /// Connects and checks that the cluster answers (at most dial_timeout).
  explicit Client(const std::vector<std::string> &endpoints, const ClientOptions &options = {})
      : Client(endpoints, options, false) {}

  /// Makes a client without waiting for etcd (etcd_sd_client_new_lazy):
  /// checks the arguments (throws ETCD_SD_ERR_INVALID_ARGUMENT, or
  /// ETCD_SD_ERR_TLS for unreadable TLS files), returns at once and dials in
  /// the background until a member answers. Before that, calls that need
  /// etcd throw ETCD_SD_ERR_TIMEOUT or ETCD_SD_ERR_UNAVAILABLE within
  /// request_timeout, and a Registrar keeps trying after its
  /// register_service() threw.
  static Client connect_lazy(const std::vector<std::string> &endpoints,
                             const ClientOptions &options = {}) {
    return Client(endpoints, options, true);
  }

  /// The values under `prefix`, in key order (go-kit's GetEntries).
  std::vector<std::string> get_entries(const std::string &prefix) const {
    etcd_sd_strings *raw = nullptr;
    detail::check(etcd_sd_client_get_entries(handle_.get(), detail::c_text(prefix, "prefix"), &raw));
    detail::Handle<etcd_sd_strings, etcd_sd_strings_free> list(raw);
    std::vector<std::string> out;
    std::size_t n = etcd_sd_strings_len(list.get());
    out.reserve(n);
    for (std::size_t i = 0; i < n; i++) out.emplace_back(etcd_sd_strings_get(list.get(), i));
    return out;
  }

  /// The client's counters (see etcd_sd_stats). Never blocks.
  etcd_sd_stats stats() const {
    etcd_sd_stats out{};
    detail::check(etcd_sd_client_stats(handle_.get(), &out, sizeof out));
    return out;
  }

  etcd_sd_client *get() const noexcept { return handle_.get(); }

 private:
  Client(const std::vector<std::string> &endpoints, const ClientOptions &options, bool lazy) {
    std::vector<const char *> eps;
    eps.reserve(endpoints.size());
    for (const std::string &e : endpoints) eps.push_back(detail::c_text(e, "endpoint"));
    etcd_sd_client_options o;
    etcd_sd_client_options_init(&o);
    auto str = [](const std::optional<std::string> &s) {
      return s ? detail::c_text(*s, "option") : nullptr;
    };
    o.cert = str(options.cert);
    o.key = str(options.key);
    o.ca_cert = str(options.ca_cert);
    o.username = str(options.username);
    o.password = str(options.password);
    o.dial_timeout_ms = to_c_millis(options.dial_timeout);
    o.dial_keep_alive_ms = to_c_millis(options.dial_keep_alive);
    o.request_timeout_ms = to_c_millis(options.request_timeout);
    etcd_sd_client *c = nullptr;
    detail::check(lazy ? etcd_sd_client_new_lazy(eps.data(), eps.size(), &o, &c)
                       : etcd_sd_client_new(eps.data(), eps.size(), &o, &c));
    handle_.reset(c);
  }

  detail::Handle<etcd_sd_client, etcd_sd_client_free> handle_;
};

/// Where a Registrar stands (the ETCD_SD_STATE_* numbers).
enum class RegistrationState : std::int32_t {
  Unregistered = ETCD_SD_STATE_UNREGISTERED,
  Registering = ETCD_SD_STATE_REGISTERING,
  Registered = ETCD_SD_STATE_REGISTERED,
  Lost = ETCD_SD_STATE_LOST,
  Deregistered = ETCD_SD_STATE_DEREGISTERED,
  Paused = ETCD_SD_STATE_PAUSED,
};

/// Keeps one service registered under its own lease (go-kit's Registrar).
/// The destructor deregisters (bounded by request_timeout).
class Registrar {
 public:
  /// heartbeat and ttl of 0 mean 3 s and 10 s (go-kit's TTLOption rules
  /// otherwise). Throws ETCD_SD_ERR_NO_KEY / ETCD_SD_ERR_NO_VALUE for an
  /// empty key / value.
  Registrar(const Client &client, const std::string &key, const std::string &value,
            std::chrono::milliseconds heartbeat = std::chrono::milliseconds(0),
            std::chrono::milliseconds ttl = std::chrono::milliseconds(0)) {
    etcd_sd_registrar *r = nullptr;
    detail::check(etcd_sd_registrar_new(client.get(), detail::c_text(key, "key"), detail::c_text(value, "value"),
                                        to_c_millis(heartbeat), to_c_millis(ttl), &r));
    handle_.reset(r);
  }

  /// Registers and keeps the key alive, blocking until it is written (at
  /// most request_timeout). (`register` is a C++ keyword.)
  void register_service() { detail::check(etcd_sd_registrar_register(handle_.get())); }

  /// Revokes the lease; the key goes at once. Idempotent.
  void deregister_service() { detail::check(etcd_sd_registrar_deregister(handle_.get())); }

  /// Drains: revokes the lease (the key goes at once); nothing registers it
  /// again until resume(). Paused even when it throws (etcd unreachable:
  /// ETCD_SD_ERR_TIMEOUT / ETCD_SD_ERR_UNAVAILABLE within request_timeout;
  /// the key then goes after its ttl). Twice, before registering, or before
  /// deregister_service() is fine.
  void pause() { detail::check(etcd_sd_registrar_pause(handle_.get())); }

  /// Registers again under a new lease, as register_service() (which it is
  /// when not paused).
  void resume() { detail::check(etcd_sd_registrar_resume(handle_.get())); }

  /// The current state; never blocks.
  RegistrationState state() const {
    etcd_sd_registration_state out = ETCD_SD_STATE_UNREGISTERED;
    detail::check(etcd_sd_registrar_state(handle_.get(), &out));
    return static_cast<RegistrationState>(out);
  }

  /// The lease holding the key, 0 if none.
  std::int64_t lease_id() const noexcept { return etcd_sd_registrar_lease_id(handle_.get()); }

  etcd_sd_registrar *get() const noexcept { return handle_.get(); }

 private:
  detail::Handle<etcd_sd_registrar, etcd_sd_registrar_free> handle_;
};

/// A polled stream of events. It stays valid after its Instancer is stopped
/// or destroyed: the events already delivered can still be received, then
/// receiving throws Error with status ETCD_SD_ERR_CLOSED.
class Subscription {
 public:
  /// Waits for the next event with no time limit.
  Event recv() {
    etcd_sd_event *ev = nullptr;
    detail::check(etcd_sd_subscription_recv(handle_.get(), UINT64_MAX, &ev));
    return Event(ev);
  }

  /// Waits at most `timeout`; nullopt when nothing came in time.
  std::optional<Event> recv(std::chrono::milliseconds timeout) {
    etcd_sd_event *ev = nullptr;
    Status s = etcd_sd_subscription_recv(handle_.get(), to_c_millis(timeout), &ev);
    if (s == ETCD_SD_ERR_TIMEOUT) return std::nullopt;
    detail::check(s);
    return Event(ev);
  }

  /// The event waiting, if any, without blocking.
  std::optional<Event> try_recv() {
    etcd_sd_event *ev = nullptr;
    Status s = etcd_sd_subscription_try_recv(handle_.get(), &ev);
    if (s == ETCD_SD_NODATA) return std::nullopt;
    detail::check(s);
    return Event(ev);
  }

  etcd_sd_subscription *get() const noexcept { return handle_.get(); }

 private:
  friend class Instancer;
  explicit Subscription(etcd_sd_subscription *s) : handle_(s) {}
  detail::Handle<etcd_sd_subscription, etcd_sd_subscription_free> handle_;
};

/// Picks one instance per call (round robin or random). Thread-safe.
class Balancer {
 public:
  /// The next instance. Throws ETCD_SD_ERR_NO_ENDPOINTS on an empty set,
  /// ETCD_SD_ERR_CLOSED once the instancer is stopped.
  std::string next() {
    char small[256];
    std::size_t needed = 0;
    Status s = etcd_sd_balancer_next(handle_.get(), small, sizeof small, &needed);
    // A too-small buffer keeps the pick for the next call: ask again with room.
    for (int round = 0; s == ETCD_SD_ERR_BUFFER_TOO_SMALL && round < 8; round++) {
      std::string big(needed, '\0');
      s = etcd_sd_balancer_next(handle_.get(), &big[0], big.size(), &needed);
      if (s == ETCD_SD_OK) {
        big.resize(needed - 1);
        return big;
      }
    }
    detail::check(s);
    return std::string(small);
  }

  /// Calls `attempt(instance)` with instances from this balancer until it
  /// returns true, at most `max` times, within `timeout` for all attempts
  /// (go-kit's lb.Retry). An exception from `attempt` counts as a failed
  /// attempt (its what() ends up in the error text); it never crosses into
  /// the library. Throws Error: ETCD_SD_ERR_TIMEOUT, ETCD_SD_ERR_NO_ENDPOINTS,
  /// ETCD_SD_ERR_CLOSED, or ETCD_SD_ERR_UNAVAILABLE when every attempt failed.
  void retry(std::size_t max, std::chrono::milliseconds timeout,
             const std::function<bool(std::string_view)> &attempt) {
    Attempts a{&attempt, {}};
    Status s = etcd_sd_retry(handle_.get(), max, to_c_millis(timeout), &Balancer::trampoline, &a);
    if (s != ETCD_SD_OK) {
      Error e = Error::last(s);
      if (!a.last_exception.empty())
        throw Error(s, std::string(e.what()) + " (last exception: " + a.last_exception + ")");
      throw e;
    }
  }

  etcd_sd_balancer *get() const noexcept { return handle_.get(); }

 private:
  friend class Instancer;
  explicit Balancer(etcd_sd_balancer *b) : handle_(b) {}

  struct Attempts {
    const std::function<bool(std::string_view)> *fn;
    std::string last_exception;
  };

  static int trampoline(const char *instance, void *context) noexcept {
    Attempts *a = static_cast<Attempts *>(context);
    try {
      return (*a->fn)(instance) ? 0 : 1;
    } catch (const std::exception &e) {
      try {
        a->last_exception = e.what();
      } catch (...) {
      }
      return 2;
    } catch (...) {
      try {
        a->last_exception = "unknown exception";
      } catch (...) {
      }
      return 2;
    }
  }

  detail::Handle<etcd_sd_balancer, etcd_sd_balancer_free> handle_;
};

/// Options of an Instancer that starts while etcd may be down
/// (etcd_sd_instancer_new_with_snapshot).
struct InstancerOptions {
  /// A snapshot file to start from when etcd does not answer, written within
  /// 1 s of every change etcd reports (atomically). nullopt: none.
  std::optional<std::string> snapshot_file;
  /// A snapshot older than this is ignored. 0 = 24 hours.
  std::chrono::milliseconds snapshot_max_age{0};
};

/// Watches a prefix (end it with '/') and keeps subscribers up to date
/// (go-kit's Instancer). The destructor stops it: callbacks are removed and
/// released, subscriptions end after the events they hold.
class Instancer {
 public:
  using Callback = std::function<void(const Event &)>;
  /// Told about exceptions thrown by a Callback (which stays registered).
  using ErrorHandler = std::function<void(std::exception_ptr)>;
  using CallbackId = std::uint64_t;

  Instancer(const Client &client, const std::string &prefix) {
    etcd_sd_instancer *i = nullptr;
    detail::check(etcd_sd_instancer_new(client.get(), detail::c_text(prefix, "prefix"), &i));
    handle_.reset(i);
  }

  /// Never throws because etcd does not answer (only ETCD_SD_ERR_INVALID_ARGUMENT
  /// and ETCD_SD_ERR_CLOSED): waits for the first read at most request_timeout;
  /// when etcd does not answer, the first Event has the error
  /// (ETCD_SD_ERR_UNAVAILABLE or ETCD_SD_ERR_TIMEOUT) and the instances of the
  /// snapshot file, and an Event with etcd's state follows when it answers.
  Instancer(const Client &client, const std::string &prefix, const InstancerOptions &options) {
    etcd_sd_instancer *i = nullptr;
    detail::check(etcd_sd_instancer_new_with_snapshot(
        client.get(), detail::c_text(prefix, "prefix"),
        options.snapshot_file ? detail::c_text(*options.snapshot_file, "snapshot_file") : nullptr,
        to_c_millis(options.snapshot_max_age), &i));
    handle_.reset(i);
  }

  /// Calls `fn` with the current state, then with every change, on the
  /// library's dispatcher thread, in order. `fn` (and everything it
  /// captured) is destroyed exactly once, after its last call: on
  /// remove_callback, stop or destruction. An exception thrown by `fn` is
  /// caught (and given to `on_error`, if set); `fn` stays registered.
  CallbackId on_update(Callback fn, ErrorHandler on_error = nullptr) {
    Holder *holder = new Holder{std::move(fn), std::move(on_error)};
    CallbackId id = 0;
    // On failure the library has already released `holder` (drop runs in
    // every case), so there is nothing to clean up here.
    detail::check(etcd_sd_instancer_on_update(handle_.get(), &Instancer::call_trampoline,
                                              &Instancer::drop_trampoline, holder, &id));
    return id;
  }

  /// Removes a callback; once this returns it is not called again (unless
  /// called from inside that very callback, which may do so).
  void remove_callback(CallbackId id) {
    detail::check(etcd_sd_instancer_remove_callback(handle_.get(), id));
  }

  /// A new polled subscription holding the current state.
  Subscription subscribe() {
    etcd_sd_subscription *s = nullptr;
    detail::check(etcd_sd_instancer_subscribe(handle_.get(), &s));
    return Subscription(s);
  }

  /// A round-robin balancer over the instances.
  Balancer round_robin() {
    etcd_sd_balancer *b = nullptr;
    detail::check(etcd_sd_balancer_round_robin(handle_.get(), &b));
    return Balancer(b);
  }

  /// A random balancer over the instances, deterministic for `seed`.
  Balancer random(std::uint64_t seed) {
    etcd_sd_balancer *b = nullptr;
    detail::check(etcd_sd_balancer_random(handle_.get(), seed, &b));
    return Balancer(b);
  }

  /// Stops watching; afterwards every call throws ETCD_SD_ERR_CLOSED.
  void stop() noexcept { etcd_sd_instancer_stop(handle_.get()); }

  etcd_sd_instancer *get() const noexcept { return handle_.get(); }

 private:
  struct Holder {
    Callback fn;
    ErrorHandler on_error;
  };

  static void call_trampoline(const etcd_sd_event *ev, void *context) noexcept {
    Holder *h = static_cast<Holder *>(context);
    try {
      Event lent = Event::lend(ev);
      h->fn(lent);
    } catch (...) {
      if (h->on_error) {
        try {
          h->on_error(std::current_exception());
        } catch (...) {
        }
      }
    }
  }

  static void drop_trampoline(void *context) noexcept {
    // A destructor that throws would terminate; that is the callback's own
    // bug, and still no exception crosses into the library.
    delete static_cast<Holder *>(context);
  }

  detail::Handle<etcd_sd_instancer, etcd_sd_instancer_free> handle_;
};

/// etcd's own naming format, which Go's endpoints.Manager and gRPC's
/// etcd:///TARGET resolver read: register encode(endpoint) at a key
/// TARGET/<anything>; decode what is found under TARGET/. See the Rust
/// module etcd_sd::naming for the rules (metadata is JSON text kept as
/// written; Op is checked and ignored; unknown fields are ignored).
///
/// gRPC-Go dialers on etcd 3.4's resolver (gRPC-Go up to 1.33) crash on
/// object or array metadata: give them none, or a string.
namespace naming {

/// One endpoint: the address a gRPC client dials, and optional metadata
/// (JSON text).
struct Endpoint {
  std::string addr;
  std::optional<std::string> metadata;

  bool operator==(const Endpoint &o) const { return addr == o.addr && metadata == o.metadata; }
  bool operator!=(const Endpoint &o) const { return !(*this == o); }
};

namespace detail {
struct StringFree {
  void operator()(char *p) const noexcept { etcd_sd_string_free(p); }
};
using OwnedString = std::unique_ptr<char, StringFree>;

}  // namespace detail

/// The etcd value {"Op":0,"Addr":...,"Metadata":...}. Throws Error
/// (ETCD_SD_ERR_INVALID_ARGUMENT) when the metadata is not valid JSON (or
/// JSON Go cannot read), or a string holds a NUL character.
inline std::string encode(const Endpoint &e) {
  char *out = nullptr;
  const char *addr = etcd_sd::detail::c_text(e.addr, "addr");
  const char *metadata = e.metadata ? etcd_sd::detail::c_text(*e.metadata, "metadata") : nullptr;
  ::etcd_sd::detail::check(etcd_sd_naming_encode(addr, metadata, &out));
  detail::OwnedString owned(out);
  return std::string(owned.get());
}

/// Reads an etcd value in the naming format. Throws Error
/// (ETCD_SD_ERR_INVALID_ARGUMENT) when it is not one (a NUL character
/// included: JSON holds none).
inline Endpoint decode(std::string_view value) {
  std::string text(value);
  char *addr = nullptr;
  char *metadata = nullptr;
  ::etcd_sd::detail::check(
      etcd_sd_naming_decode(etcd_sd::detail::c_text(text, "value"), &addr, &metadata));
  detail::OwnedString a(addr), m(metadata);
  Endpoint e{std::string(a.get()), std::nullopt};
  if (m) e.metadata = std::string(m.get());
  return e;
}

}  // namespace naming

}  // namespace etcd_sd

#endif  // ETCD_SD_HPP
