//! The Redis side of a dead-letter redrive: taking dead letters into a
//! processing list and removing them once the redrive is committed.
//!
//! A message is never only in the caller's memory: it moves from
//! `{<queue>}:dead` to `{<queue>}:dead:redriving` in one atomic step and
//! leaves the processing list only after PostgreSQL committed what it
//! meant. A redrive that dies in between leaves it there, and the next
//! redrive (or the service's start) finishes it.

use std::sync::LazyLock;

use fred::{
    prelude::{ListInterface, Value},
    types::scripts::Script,
};

use super::{Lane, QueueError, RedisQueue};

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("dead_take.lua")));
static FINISH: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("dead_finish.lua")));
static TRIM: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("dead_trim.lua")));

/// Suffix of the processing list, `{<queue>}:dead:redriving`.
const REDRIVING_SUFFIX: &str = "dead:redriving";

impl RedisQueue {
    /// The key of the list that holds dead letters while they are redriven.
    pub fn redriving_key(&self) -> String {
        self.queue.tagged(REDRIVING_SUFFIX)
    }

    /// Up to `limit` dead letters to redrive, oldest first: what the
    /// processing list already holds (left by a redrive that did not
    /// finish), topped up from the head of the dead lane when `take_new`.
    pub async fn take_dead_letters(
        &self,
        limit: usize,
        take_new: bool,
    ) -> Result<Vec<String>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply: Value = TAKE
            .evalsha_with_reload(
                &self.client,
                vec![self.queue.key(Lane::Dead), self.redriving_key()],
                vec![
                    limit.to_string(),
                    if take_new { "1" } else { "0" }.to_owned(),
                ],
            )
            .await?;
        match reply {
            Value::Array(items) => items
                .into_iter()
                .map(|item| {
                    item.into_string()
                        .ok_or_else(|| QueueError::Reply("dead letter is not a string".into()))
                })
                .collect(),
            Value::Null => Ok(Vec::new()),
            other => Err(QueueError::Reply(format!("take dead letters: {other:?}"))),
        }
    }

    /// The oldest `count` dead letters, oldest first.
    pub async fn oldest_dead_letters(&self, count: usize) -> Result<Vec<String>, QueueError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let end = i64::try_from(count).unwrap_or(i64::MAX) - 1;
        Ok(self
            .client
            .lrange(self.queue.key(Lane::Dead), 0, end)
            .await?)
    }

    /// Drops `expired` (read from the head with
    /// [`oldest_dead_letters`](Self::oldest_dead_letters)) while they are
    /// still the head, then the oldest messages beyond `max_length` (0: no
    /// cap). Returns how many were dropped.
    pub async fn trim_dead_letters(
        &self,
        expired: &[String],
        max_length: u64,
    ) -> Result<u64, QueueError> {
        let mut args = Vec::with_capacity(1 + expired.len());
        args.push(max_length.to_string());
        args.extend(expired.iter().cloned());
        let dropped: i64 = TRIM
            .evalsha_with_reload(&self.client, vec![self.queue.key(Lane::Dead)], args)
            .await?;
        Ok(u64::try_from(dropped).unwrap_or(0))
    }

    /// Removes `handled` from the processing list and moves `unreadable`
    /// back to the tail of the dead lane. Returns the dead lane's length.
    pub async fn finish_dead_letters(
        &self,
        handled: &[String],
        unreadable: &[String],
    ) -> Result<u64, QueueError> {
        let mut args = Vec::with_capacity(1 + handled.len() + unreadable.len());
        args.push(handled.len().to_string());
        args.extend(handled.iter().cloned());
        args.extend(unreadable.iter().cloned());
        let left: i64 = FINISH
            .evalsha_with_reload(
                &self.client,
                vec![self.queue.key(Lane::Dead), self.redriving_key()],
                args,
            )
            .await?;
        Ok(u64::try_from(left).unwrap_or(0))
    }
}
