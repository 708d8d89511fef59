//! The request cache: a request waits under a random single-use token until its client connects, as in
//! kubelet's streaming server. The token is the only credential of the URL, so it is unguessable
//! (128 random bits), consumed on first use and short-lived, and the number waiting is bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::RequestError;
use crate::runtime::{AttachRequest, ExecRequest, PortForwardRequest};

/// A request waiting for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// An exec.
    Exec(ExecRequest),
    /// An attach.
    Attach(AttachRequest),
    /// A port-forward.
    PortForward(PortForwardRequest),
}

/// Tokens and their requests.
#[derive(Debug)]
pub struct RequestCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl RequestCache {
    /// A cache keeping each request `ttl`, at most `capacity` at a time.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { ttl, capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// Stores `req` and returns its token.
    pub fn insert(&self, req: Pending) -> Result<String, RequestError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(RequestError::Random)?;
        let token = hex::encode(raw);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= self.capacity {
            return Err(RequestError::Full(self.capacity));
        }
        entries.insert(token.clone(), (now + self.ttl, req));
        Ok(token)
    }

    /// Takes the request of `token`, if it is there and not expired. A token works once.
    pub fn consume(&self, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, req) = entries.remove(token)?;
        (expires > Instant::now()).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest { pod_sandbox_id: "pod".into(), ports: vec![80] })
    }

    #[test]
    fn a_token_works_once() -> Result<(), RequestError> {
        let cache = RequestCache::new(Duration::from_secs(60), 10);
        let t = cache.insert(pf())?;
        assert_eq!(t.len(), 32);
        assert_eq!(cache.consume(&t), Some(pf()));
        assert_eq!(cache.consume(&t), None);
        assert_eq!(cache.consume("nope"), None);
        Ok(())
    }

    #[test]
    fn expired_tokens_are_gone_and_free_their_slot() -> Result<(), RequestError> {
        let cache = RequestCache::new(Duration::from_millis(20), 1);
        let t = cache.insert(pf())?;
        assert!(matches!(cache.insert(pf()), Err(RequestError::Full(1))));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.consume(&t), None);
        let t2 = cache.insert(pf())?;
        assert_ne!(t, t2);
        Ok(())
    }
}
