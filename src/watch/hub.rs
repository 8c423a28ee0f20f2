//! Fan-out of job changes to the streams watching them.
//!
//! Each watched job has one broadcast channel. The listener sends each
//! change once; every stream of that job receives every change, in order,
//! without touching the database. A stream that falls more than
//! [`EVENTS_PER_JOB`] changes behind is told so (it then reads a fresh
//! snapshot of the job); nothing is skipped silently.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::broadcast;
use uuid::Uuid;

use super::event::Change;

/// Changes buffered per watched job for its slowest stream.
pub const EVENTS_PER_JOB: usize = 256;

/// What a stream receives.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// One change of the job or of a subtask.
    Change(Arc<Change>),
    /// Changes may have been missed (the LISTEN connection was re-opened):
    /// read the job again.
    Resync,
}

struct Entry {
    sender: broadcast::Sender<HubEvent>,
    watchers: usize,
}

/// Registry of watched jobs. Cheap to clone.
#[derive(Clone, Default)]
pub struct WatchHub {
    jobs: Arc<Mutex<HashMap<Uuid, Entry>>>,
}

/// A stream's handle; unregisters itself when dropped.
pub struct Subscription {
    hub: WatchHub,
    job_id: Uuid,
    pub events: broadcast::Receiver<HubEvent>,
}

impl WatchHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts watching a job. Subscribe before reading the job's state, so
    /// that no change between the read and the subscription is missed.
    pub fn subscribe(&self, job_id: Uuid) -> Subscription {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = jobs.entry(job_id).or_insert_with(|| Entry {
            sender: broadcast::channel(EVENTS_PER_JOB).0,
            watchers: 0,
        });
        entry.watchers += 1;
        Subscription {
            hub: self.clone(),
            job_id,
            events: entry.sender.subscribe(),
        }
    }

    /// Hands a change to the streams of its job, if any.
    pub fn publish(&self, change: Change) {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = jobs.get(&change.job_id()) {
            let _ = entry.sender.send(HubEvent::Change(Arc::new(change)));
        }
    }

    /// Tells the streams of one job to read it again.
    pub fn resync(&self, job_id: Uuid) {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = jobs.get(&job_id) {
            let _ = entry.sender.send(HubEvent::Resync);
        }
    }

    /// Tells every stream to read its job again.
    pub fn resync_all(&self) {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in jobs.values() {
            let _ = entry.sender.send(HubEvent::Resync);
        }
    }

    /// How many jobs are watched.
    pub fn watched_jobs(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How many streams are open.
    pub fn open_streams(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|entry| entry.watchers)
            .sum()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut jobs = self.hub.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = jobs.get_mut(&self.job_id) {
            entry.watchers = entry.watchers.saturating_sub(1);
            if entry.watchers == 0 {
                jobs.remove(&self.job_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::event::JobChange;

    fn change(job_id: Uuid, attempts: i32) -> Change {
        Change::Job(JobChange {
            job_id,
            xid: 1,
            status: "PENDING".into(),
            attempts,
            error: None,
            reread: false,
            updated_at: 0,
        })
    }

    #[tokio::test]
    async fn every_change_reaches_every_watcher_of_that_job_only_in_order() {
        let hub = WatchHub::new();
        let job = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mut first = hub.subscribe(job);
        let mut second = hub.subscribe(job);
        let mut elsewhere = hub.subscribe(other);
        for attempts in 0..3 {
            hub.publish(change(job, attempts));
        }
        for subscription in [&mut first, &mut second] {
            for attempts in 0..3 {
                match subscription.events.recv().await.unwrap() {
                    HubEvent::Change(c) => assert_eq!(*c, change(job, attempts)),
                    HubEvent::Resync => panic!("a change"),
                }
            }
        }
        assert!(elsewhere.events.try_recv().is_err());
        hub.resync_all();
        assert!(matches!(
            elsewhere.events.recv().await,
            Ok(HubEvent::Resync)
        ));
        assert_eq!(hub.open_streams(), 3);
    }

    #[test]
    fn the_last_watcher_leaving_unregisters_the_job() {
        let hub = WatchHub::new();
        let job = Uuid::new_v4();
        let first = hub.subscribe(job);
        let second = hub.subscribe(job);
        assert_eq!(hub.watched_jobs(), 1);
        drop(first);
        assert_eq!(hub.watched_jobs(), 1);
        drop(second);
        assert_eq!(hub.watched_jobs(), 0);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_so() {
        let hub = WatchHub::new();
        let job = Uuid::new_v4();
        let mut slow = hub.subscribe(job);
        for attempts in 0..(EVENTS_PER_JOB as i32 + 10) {
            hub.publish(change(job, attempts));
        }
        assert!(matches!(
            slow.events.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
    }
}
