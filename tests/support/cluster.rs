//! Several etcd members on 127.0.0.1 in one cluster.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::etcd::{EtcdConfig, EtcdServer, START_TIMEOUT};
use super::{free_port, wait_until, UNIQUE};

/// A cluster of etcd members on 127.0.0.1, each an [`EtcdServer`] with its
/// own ports and data directory, listed in each other's `--initial-cluster`.
/// Dropping it kills every member.
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members on fresh ports and waits (bounded) until every one
    /// serves a read (which needs an elected leader).
    pub fn start(n: usize) -> EtcdCluster {
        assert!(n >= 1);
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let token = format!("itc{}", UNIQUE.fetch_add(1, Ordering::Relaxed));
            let mut members: Vec<EtcdServer> = (0..n)
                .map(|i| {
                    let mut m = EtcdServer::unstarted(EtcdConfig::default());
                    m.name = format!("{token}-m{i}");
                    m.client_port = free_port();
                    m.peer_port = free_port();
                    m.cluster_token = Some(token.clone());
                    m
                })
                .collect();
            let initial = members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut members {
                m.initial_cluster = Some(initial.clone());
                m.spawn();
            }
            let mut ok = true;
            for m in &mut members {
                if let Err(e) = m.wait_ready(START_TIMEOUT) {
                    last_err = format!("{}: {e}\n--- log tail ---\n{}", m.name, m.log_tail());
                    ok = false;
                    break;
                }
            }
            if ok {
                return EtcdCluster { members };
            }
            for m in &mut members {
                m.kill();
            }
        }
        panic!("etcd cluster did not start: {last_err}");
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// `127.0.0.1:PORT` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &EtcdServer {
        &self.members[i]
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].is_running()
    }

    /// SIGKILL member `i` (its data stays).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again with its data and waits until it serves a read.
    pub fn restart(&mut self, i: usize) {
        self.members[i].restart();
    }

    /// Freezes member `i` (SIGSTOP): its sockets stay open, nothing answers.
    /// The cluster helpers below leave a paused member alone.
    pub fn pause(&mut self, i: usize) {
        self.members[i].pause();
    }

    /// Resumes member `i` after [`pause`](EtcdCluster::pause) (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.members[i].resume();
    }

    /// Whether member `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.members[i].is_paused()
    }

    /// Whether member `i` runs and is not paused, i.e. can answer.
    pub fn is_answering(&self, i: usize) -> bool {
        self.members[i].is_running() && !self.members[i].is_paused()
    }

    /// The first running (and not paused) member, for etcdctl work
    /// (linearizable through any member while the cluster has a quorum).
    pub fn any_live(&self) -> &EtcdServer {
        self.members
            .iter()
            .find(|m| m.is_running() && !m.is_paused())
            .expect("no member running")
    }

    /// Runs etcdctl against the running, not paused members, retrying (bounded by
    /// `timeout`) while they fail, e.g. during a leader election.
    pub fn etcdctl_retry(&self, args: &[&str], timeout: Duration) -> String {
        let mut last = String::new();
        let mut out = None;
        wait_until(timeout, || {
            for m in self
                .members
                .iter()
                .filter(|m| m.is_running() && !m.is_paused())
            {
                match m.try_etcdctl_timeout(args, "3s") {
                    Ok(o) => {
                        out = Some(o);
                        return true;
                    }
                    Err(e) => last = e,
                }
            }
            false
        });
        out.unwrap_or_else(|| {
            panic!("etcdctl {args:?} failed on every member for {timeout:?}: {last}")
        })
    }

    /// Puts `key` = `value` through a running member, retrying (bounded)
    /// while the cluster has no leader.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_retry(&["put", "--", key, value], Duration::from_secs(20));
    }

    /// Makes member `to` the leader (`etcdctl move-leader` through the
    /// current leader) and waits, bounded by `timeout`, until the answering
    /// members agree; returns whether `to` leads.
    pub fn move_leader_to(&self, to: usize, timeout: Duration) -> bool {
        let Some(leader) = self.leader_index(timeout) else {
            return false;
        };
        if leader == to {
            return true;
        }
        let Some((id, _)) = self.members[to].member_and_leader() else {
            return false;
        };
        let hex = format!("{id:x}");
        if let Err(e) = self.members[leader].try_etcdctl_timeout(&["move-leader", &hex], "5s") {
            eprintln!("move-leader to m{to} failed: {e}");
        }
        wait_until(timeout, || {
            self.leader_index(Duration::from_secs(2)) == Some(to)
        })
    }

    /// Index of the member whose client port is `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.members.iter().position(|m| m.client_port == port)
    }

    /// Index of the current leader among the running (not paused) members, waiting
    /// (bounded by `timeout`) until the running members agree on one.
    pub fn leader_index(&self, timeout: Duration) -> Option<usize> {
        let mut found = None;
        wait_until(timeout, || {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for (i, m) in self.members.iter().enumerate() {
                if !m.is_running() || m.is_paused() {
                    continue;
                }
                if let Some((id, leader)) = m.member_and_leader() {
                    ids.push((i, id));
                    leaders.push(leader);
                }
            }
            let Some(&leader) = leaders.first() else {
                return false;
            };
            if leader == 0 || leaders.iter().any(|l| *l != leader) {
                return false;
            }
            found = ids.iter().find(|(_, id)| *id == leader).map(|(i, _)| *i);
            found.is_some()
        });
        found
    }
}
