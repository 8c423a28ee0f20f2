//! Fair shares: how much of a limit one caller may hold at once, so one
//! caller cannot take every call slot or every watch stream from the rest.
//!
//! A share is counted per caller identity (the token's `sub`) and given
//! back when dropped. Only authenticated callers are counted: without
//! authentication an identity is whatever the caller says it is.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

/// Per-caller counts of one limit.
#[derive(Clone)]
pub struct Shares {
    limit: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One caller's hold on one place; the place comes back when dropped.
pub struct Share {
    held: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Shares {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for `caller`, or `None` when it already holds `limit`.
    pub fn try_take(&self, caller: &str) -> Option<Share> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(caller.to_owned()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Share {
            held: self.held.clone(),
            caller: caller.to_owned(),
        })
    }

    /// Places `caller` holds now.
    pub fn held_by(&self, caller: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(caller).copied().unwrap_or(0)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Callers come and go: no entry outlives its last share.
                held.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_at_its_limit_leaves_the_others_served_and_places_come_back() {
        let shares = Shares::new(2);
        let first = shares.try_take("a").unwrap();
        let _second = shares.try_take("a").unwrap();
        assert!(shares.try_take("a").is_none(), "a is at its limit");
        assert!(shares.try_take("b").is_some(), "b is served");
        drop(first);
        assert_eq!(shares.held_by("a"), 1);
        assert!(shares.try_take("a").is_some());
        drop(_second);
        assert_eq!(shares.held_by("b"), 0, "b's dropped share came back");
    }

    #[test]
    fn no_entry_outlives_its_last_share() {
        let shares = Shares::new(1);
        for caller in 0..1000 {
            drop(shares.try_take(&caller.to_string()));
        }
        assert!(shares.held.lock().unwrap().is_empty());
    }
}
