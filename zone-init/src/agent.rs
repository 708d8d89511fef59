//! What init does with the host's requests. This step answers the control messages (welcome, ping,
//! shutdown); workload requests get an `Unsupported` error until the workload machinery is wired in.

use bulkhead_wire::{ErrorCode, HostToZone, StreamId, ZoneToHost};

use crate::say;

/// What the event loop must do after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep serving.
    Continue,
    /// Power the zone off, giving processes `grace_ms` after SIGTERM.
    Shutdown {
        /// Grace period in milliseconds.
        grace_ms: u32,
    },
}

/// The request handler's state.
#[derive(Debug, Default)]
pub struct Agent {
    welcomed: bool,
}

impl Agent {
    /// A fresh agent, before the host's welcome.
    pub fn new() -> Self {
        Agent::default()
    }

    /// Whether the host has answered our hello.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// Handles one request; answers go to `out`.
    pub fn handle(&mut self, msg: HostToZone, out: &mut Vec<ZoneToHost>) -> Action {
        match msg {
            HostToZone::Welcome { zone_id, hostname } => {
                say!("host channel up: zone {zone_id} ({hostname})");
                self.welcomed = true;
            }
            HostToZone::Ping { nonce } => out.push(ZoneToHost::Pong { nonce }),
            HostToZone::Shutdown { grace_ms } => return Action::Shutdown { grace_ms },
            HostToZone::GetStats { .. } => out.push(unsupported(None, "stats")),
            HostToZone::CreateWorkload { id, .. }
            | HostToZone::StartWorkload { id }
            | HostToZone::RemoveWorkload { id }
            | HostToZone::Signal { id, .. }
            | HostToZone::Exec { exec_id: id, .. }
            | HostToZone::Stdin { stream_id: id, .. }
            | HostToZone::CloseStdin { stream_id: id }
            | HostToZone::Resize { stream_id: id, .. } => out.push(unsupported(Some(id), "workloads")),
        }
        Action::Continue
    }
}

fn unsupported(request: Option<StreamId>, what: &str) -> ZoneToHost {
    ZoneToHost::Error {
        request,
        code: ErrorCode::Unsupported,
        message: format!("this zone init does not support {what} yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_is_answered_with_the_same_nonce_and_shutdown_ends_the_loop() {
        let mut agent = Agent::new();
        let mut out = Vec::new();
        assert_eq!(agent.handle(HostToZone::Ping { nonce: 42 }, &mut out), Action::Continue);
        assert_eq!(out, [ZoneToHost::Pong { nonce: 42 }]);
        assert_eq!(agent.handle(HostToZone::Shutdown { grace_ms: 5 }, &mut out), Action::Shutdown { grace_ms: 5 });
        assert!(!agent.welcomed());
        agent.handle(HostToZone::Welcome { zone_id: "z".into(), hostname: "h".into() }, &mut out);
        assert!(agent.welcomed());
    }
}
