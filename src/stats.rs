//! [`Stats`]: how a client is doing, as counters that anyone can read at any
//! time without disturbing the runtime (atomics, no lock).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of a client's counters ([`Client::stats`](crate::Client::stats)).
///
/// The counters (`registrations` to `callback_panics`) only grow, from the
/// client's creation; they are shared by its clones and by everything made
/// from it. `registrars`, `registered` and `instancers` are how many there
/// are now; "alive" means not yet dropped (deregistered or stopped ones
/// included).
///
/// ```no_run
/// let client = etcd_sd::Client::connect(&["127.0.0.1:2379"], Default::default())?;
/// let stats = client.stats();
/// if stats.leases_lost > 0 {
///     eprintln!("{} leases lost, {} registrations made again",
///         stats.leases_lost, stats.reregistrations);
/// }
/// # Ok::<(), etcd_sd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The last call to etcd got an answer.
    pub connected: bool,
    /// Registrars alive on this client (clones share one count).
    pub registrars: u64,
    /// Of those, the ones now `Registered`.
    pub registered: u64,
    /// Keys written: first registrations and re-registrations.
    pub registrations: u64,
    /// Registrations made again after a loss.
    pub reregistrations: u64,
    /// Leases found expired or revoked (one per lost lease, however noticed).
    pub leases_lost: u64,
    /// Instancers alive.
    pub instancers: u64,
    /// Broken watches resumed from their revision.
    pub watch_resumes: u64,
    /// Full re-reads of a prefix (compaction, etcd lost its data).
    pub rereads: u64,
    /// Events published: one per change of an Instancer's state (error
    /// Events included), whatever the number of subscribers.
    pub events: u64,
    /// Panics caught in subscriber callbacks and in their drops.
    pub callback_panics: u64,
}

/// The live counters of one client, shared by the runtime's tasks, the
/// handles and the delivery threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connected: AtomicBool,
    registrars: AtomicU64,
    registered: AtomicU64,
    registrations: AtomicU64,
    reregistrations: AtomicU64,
    leases_lost: AtomicU64,
    instancers: AtomicU64,
    watch_resumes: AtomicU64,
    rereads: AtomicU64,
    events: AtomicU64,
}

/// One of the counters, for [`Counters::add`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Registrations,
    Reregistrations,
    LeasesLost,
    WatchResumes,
    Rereads,
    Events,
}

impl Counter {
    /// Its name with feature `metrics` (Prometheus style).
    fn metric(self) -> &'static str {
        match self {
            Counter::Registrations => "etcd_sd_registrations_total",
            Counter::Reregistrations => "etcd_sd_reregistrations_total",
            Counter::LeasesLost => "etcd_sd_leases_lost_total",
            Counter::WatchResumes => "etcd_sd_watch_resumes_total",
            Counter::Rereads => "etcd_sd_rereads_total",
            Counter::Events => "etcd_sd_events_total",
        }
    }
}

/// One of the gauges, for [`Counters::up`] and [`Counters::down`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Gauge {
    Registrars,
    Registered,
    Instancers,
}

impl Gauge {
    /// Its name with feature `metrics`.
    fn metric(self) -> &'static str {
        match self {
            Gauge::Registrars => "etcd_sd_registrars",
            Gauge::Registered => "etcd_sd_registered",
            Gauge::Instancers => "etcd_sd_instancers",
        }
    }
}

/// A panic caught in a subscriber callback or its drop (the delivery
/// threads count these themselves; this publishes it with feature
/// `metrics`).
pub(crate) fn callback_panicked() {
    export::counter("etcd_sd_callback_panics_total");
}

/// How long an Instancer took from a watch response's arrival to publishing
/// the Event it made (feature `metrics`: histogram
/// `etcd_sd_event_delay_seconds`, labelled by prefix).
pub(crate) fn event_delay(prefix: &str, delay: std::time::Duration) {
    export::histogram("etcd_sd_event_delay_seconds", prefix, delay);
}

/// The `metrics` facade, with feature `metrics`; nothing without it (and
/// the `metrics` crate is then not compiled).
#[cfg(feature = "metrics")]
mod export {
    pub(super) fn counter(name: &'static str) {
        metrics::counter!(name).increment(1);
    }

    pub(super) fn gauge(name: &'static str, delta: f64) {
        if delta >= 0.0 {
            metrics::gauge!(name).increment(delta);
        } else {
            metrics::gauge!(name).decrement(-delta);
        }
    }

    pub(super) fn connected(answered: bool) {
        metrics::gauge!("etcd_sd_connected").set(if answered { 1.0 } else { 0.0 });
    }

    pub(super) fn histogram(name: &'static str, prefix: &str, delay: std::time::Duration) {
        metrics::histogram!(name, "prefix" => prefix.to_owned()).record(delay.as_secs_f64());
    }
}

#[cfg(not(feature = "metrics"))]
mod export {
    pub(super) fn counter(_: &'static str) {}
    pub(super) fn gauge(_: &'static str, _: f64) {}
    pub(super) fn connected(_: bool) {}
    pub(super) fn histogram(_: &'static str, _: &str, _: std::time::Duration) {}
}

impl Counters {
    fn counter(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::Registrations => &self.registrations,
            Counter::Reregistrations => &self.reregistrations,
            Counter::LeasesLost => &self.leases_lost,
            Counter::WatchResumes => &self.watch_resumes,
            Counter::Rereads => &self.rereads,
            Counter::Events => &self.events,
        }
    }

    fn gauge(&self, g: Gauge) -> &AtomicU64 {
        match g {
            Gauge::Registrars => &self.registrars,
            Gauge::Registered => &self.registered,
            Gauge::Instancers => &self.instancers,
        }
    }

    /// Counts one more `c`.
    pub(crate) fn add(&self, c: Counter) {
        self.counter(c).fetch_add(1, Ordering::Relaxed);
        export::counter(c.metric());
    }

    /// One more `g`.
    pub(crate) fn up(&self, g: Gauge) {
        self.gauge(g).fetch_add(1, Ordering::Relaxed);
        export::gauge(g.metric(), 1.0);
    }

    /// One `g` fewer (never below zero).
    pub(crate) fn down(&self, g: Gauge) {
        if self
            .gauge(g)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
            .is_ok()
        {
            export::gauge(g.metric(), -1.0);
        }
    }

    /// Whether the last call to etcd got an answer.
    pub(crate) fn set_connected(&self, answered: bool) {
        self.connected.store(answered, Ordering::Relaxed);
        export::connected(answered);
    }

    /// The counters now, with the panics counted by the delivery threads.
    pub(crate) fn snapshot(&self, callback_panics: u64) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connected: self.connected.load(Ordering::Relaxed),
            registrars: get(&self.registrars),
            registered: get(&self.registered),
            registrations: get(&self.registrations),
            reregistrations: get(&self.reregistrations),
            leases_lost: get(&self.leases_lost),
            instancers: get(&self.instancers),
            watch_resumes: get(&self.watch_resumes),
            rereads: get(&self.rereads),
            events: get(&self.events),
            callback_panics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges() {
        let c = Counters::default();
        assert_eq!(c.snapshot(0), Stats::default());
        c.add(Counter::Events);
        c.add(Counter::Events);
        c.up(Gauge::Registrars);
        c.down(Gauge::Registrars);
        c.down(Gauge::Registrars);
        c.set_connected(true);
        let s = c.snapshot(3);
        assert_eq!(s.events, 2);
        assert_eq!(s.registrars, 0, "a gauge never goes below zero");
        assert!(s.connected);
        assert_eq!(s.callback_panics, 3);
    }
}
