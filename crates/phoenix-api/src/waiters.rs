//! Wake-ups for long-polls. A waiting `GET /api/v1/agent/tasks` holds no database connection:
//! it parks on a per-host [`Notify`] and claims again only when a task for it (or for any
//! host) was enqueued, in this process or — through the store's `LISTEN/NOTIFY` — in another.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;

use phoenix_core::HostId;
use phoenix_store::Wakeup;

#[derive(Debug, Default)]
pub struct Waiters {
    hosts: DashMap<HostId, Arc<Notify>>,
    any_host: Notify,
}

/// A registration held while a long-poll waits; dropping it forgets the host when no one
/// else waits for it.
#[derive(Debug)]
pub struct Registration<'a> {
    waiters: &'a Waiters,
    host: HostId,
    pub notify: Arc<Notify>,
}

impl Waiters {
    pub fn register(&self, host: &HostId) -> Registration<'_> {
        let notify = self.hosts.entry(host.clone()).or_default().clone();
        Registration {
            waiters: self,
            host: host.clone(),
            notify,
        }
    }

    pub fn any_host(&self) -> &Notify {
        &self.any_host
    }

    pub fn wake(&self, wakeup: &Wakeup) {
        match wakeup {
            Wakeup::Host(h) => {
                if let Some(n) = self.hosts.get(h) {
                    n.notify_waiters();
                }
            }
            Wakeup::AnyHost => self.any_host.notify_waiters(),
            Wakeup::Resync => {
                for n in self.hosts.iter() {
                    n.notify_waiters();
                }
                self.any_host.notify_waiters();
            }
            // Not about the queue.
            Wakeup::AgentChanged(_) => {}
        }
    }

    pub fn wake_for(&self, host: Option<&HostId>) {
        match host {
            Some(h) => self.wake(&Wakeup::Host(h.clone())),
            None => self.wake(&Wakeup::AnyHost),
        }
    }

    /// Hosts with a long-poll parked right now.
    pub fn waiting_hosts(&self) -> usize {
        self.hosts.len()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // Only the map's reference left (checked under the shard lock): nobody waits.
        let host = self.host.clone();
        let notify = std::mem::take(&mut self.notify);
        drop(notify);
        self.waiters
            .hosts
            .remove_if(&host, |_, n| Arc::strong_count(n) == 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_for_the_host_releases_its_waiter() {
        let w = Waiters::default();
        let host = HostId::parse("a").unwrap();
        let reg = w.register(&host);
        {
            let notified = reg.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            w.wake(&Wakeup::Host(host.clone()));
            tokio::time::timeout(Duration::from_secs(5), notified)
                .await
                .unwrap();
        }
        drop(reg);
        assert_eq!(w.waiting_hosts(), 0);
    }
}
