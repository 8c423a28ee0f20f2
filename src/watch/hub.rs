//! Fan-out of job change events to the streams watching them.
//!
//! Each watched job has one `tokio::sync::watch` channel carrying a change
//! counter. A watcher only learns "something changed" and reads the job
//! itself, so a slow watcher never blocks the others or the listener: it
//! misses intermediate counts and skips to the latest state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::watch;
use uuid::Uuid;

#[derive(Default)]
struct Entry {
    changes: Option<watch::Sender<u64>>,
    watchers: usize,
}

/// Registry of watched jobs. Cheap to clone.
#[derive(Clone, Default)]
pub struct WatchHub {
    jobs: Arc<Mutex<HashMap<Uuid, Entry>>>,
}

/// A watcher's handle; unregisters itself when dropped.
pub struct Subscription {
    hub: WatchHub,
    job_id: Uuid,
    /// Resolves `changed()` whenever the job may have changed.
    pub changes: watch::Receiver<u64>,
}

impl WatchHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts watching a job. Subscribe before reading the job's state, so
    /// that no change between the read and the subscription is missed.
    pub fn subscribe(&self, job_id: Uuid) -> Subscription {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = jobs.entry(job_id).or_default();
        entry.watchers += 1;
        let sender = entry.changes.get_or_insert_with(|| watch::channel(0).0);
        let mut changes = sender.subscribe();
        changes.mark_unchanged();
        Subscription {
            hub: self.clone(),
            job_id,
            changes,
        }
    }

    /// Tells the watchers of one job that it may have changed.
    pub fn changed(&self, job_id: Uuid) {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = jobs.get(&job_id).and_then(|e| e.changes.as_ref()) {
            sender.send_modify(|count| *count = count.wrapping_add(1));
        }
    }

    /// Tells every watcher to re-read (after events may have been missed).
    pub fn all_changed(&self) {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in jobs.values().filter_map(|e| e.changes.as_ref()) {
            sender.send_modify(|count| *count = count.wrapping_add(1));
        }
    }

    /// How many jobs are watched.
    pub fn watched_jobs(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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

    #[tokio::test]
    async fn a_change_reaches_every_watcher_of_that_job_only() {
        let hub = WatchHub::new();
        let job = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mut first = hub.subscribe(job);
        let mut second = hub.subscribe(job);
        let mut elsewhere = hub.subscribe(other);
        hub.changed(job);
        assert!(first.changes.has_changed().unwrap());
        assert!(second.changes.has_changed().unwrap());
        assert!(!elsewhere.changes.has_changed().unwrap());
        first.changes.changed().await.unwrap();
        second.changes.changed().await.unwrap();
        hub.all_changed();
        elsewhere.changes.changed().await.unwrap();
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

    #[test]
    fn many_changes_to_a_slow_watcher_collapse_into_one() {
        let hub = WatchHub::new();
        let job = Uuid::new_v4();
        let mut slow = hub.subscribe(job);
        for _ in 0..1000 {
            hub.changed(job);
        }
        assert!(slow.changes.has_changed().unwrap());
        assert_eq!(*slow.changes.borrow_and_update(), 1000);
        assert!(!slow.changes.has_changed().unwrap());
    }
}
