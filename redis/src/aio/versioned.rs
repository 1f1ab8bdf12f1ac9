//! [`RedisVersioned`], async: as [`crate::RedisVersioned`].

use std::future::Future;
use std::time::Duration;

use fencelock::Version;

use super::LockServer;
use crate::error::Error;
use crate::protocol::versioned::{self as protocol, Record};

/// A versioned record on a Redis server, async: as [`crate::RedisVersioned`].
#[derive(Clone, Debug)]
pub struct RedisVersioned {
    pub(super) server: LockServer,
    pub(super) name: String,
    pub(super) key: String,
}

impl RedisVersioned {
    /// The record `name` on the server at `url`.
    ///
    /// # Errors
    /// As [`crate::RedisVersioned::open`].
    pub fn open(url: &str, name: &str) -> Result<Self, Error> {
        LockServer::open(url)?.versioned(name)
    }

    /// The record's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// As [`crate::RedisVersioned::load`].
    ///
    /// # Errors
    /// As [`crate::RedisVersioned::load`].
    pub async fn load(&self) -> Result<(Option<Vec<u8>>, Version), Error> {
        let reply = self.server.query(0, &protocol::load(&self.key)).await?;
        protocol::decode_load(&reply)
    }

    /// As [`crate::RedisVersioned::commit`]. Never sent twice.
    ///
    /// # Errors
    /// As [`crate::RedisVersioned::commit`].
    pub async fn commit(&self, version: Version, value: &[u8]) -> Result<Version, Error> {
        let request = protocol::commit(&self.key, version, value)?;
        let reply = self.server.invoke_once(&request).await?;
        protocol::decode_commit(&reply, version)
    }

    /// As [`crate::RedisVersioned::commit_with`]. Never sent twice.
    ///
    /// # Errors
    /// As [`crate::RedisVersioned::commit_with`].
    pub async fn commit_with(
        &self,
        version: Version,
        commands: &redis::Pipeline,
    ) -> Result<Version, Error> {
        let tag = self.server.is_cluster().then_some(&*self.name);
        let request = protocol::commit_with(&self.key, version, commands, tag)?;
        let reply = self.server.invoke_once(&request).await?;
        protocol::decode_commit(&reply, version)
    }

    /// As [`crate::RedisVersioned::update`]: the waits between tries are `tokio` sleeps.
    ///
    /// # Errors
    /// As [`crate::RedisVersioned::update`].
    pub async fn update(
        &self,
        change: impl FnMut(Option<&[u8]>) -> Vec<u8> + Send,
    ) -> Result<(Vec<u8>, Version), Error> {
        protocol::update(self, change).await
    }
}

impl Record for RedisVersioned {
    fn load(&self) -> impl Future<Output = Result<(Option<Vec<u8>>, Version), Error>> + Send {
        RedisVersioned::load(self)
    }

    fn commit(
        &self,
        version: Version,
        value: &[u8],
    ) -> impl Future<Output = Result<Version, Error>> + Send {
        RedisVersioned::commit(self, version, value)
    }

    fn sleep(&self, delay: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(delay)
    }
}
