//! systemd's manager over D-Bus (system bus): the state of a unit, and a reboot.
//!
//! Talks to `org.freedesktop.systemd1` directly rather than running `systemctl`, so callers get typed states
//! and errors instead of parsing text, and nothing depends on systemctl's output format.

use std::fmt;

use serde::Serialize;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

/// A failed conversation with systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The system bus could not be reached (no D-Bus daemon, or not allowed).
    #[error("cannot connect to the D-Bus system bus: is dbus running, and are you root?")]
    Connect(#[source] zbus::Error),
    /// systemd did not answer a method call.
    #[error("systemd's {method} failed")]
    Call {
        /// The D-Bus method (or property) that failed.
        method: &'static str,
        /// What D-Bus or systemd said.
        #[source]
        source: zbus::Error,
    },
    /// Reading a unit's properties failed.
    #[error("cannot read the state of unit {unit}")]
    Unit {
        /// The unit asked about.
        unit: String,
        /// What D-Bus or systemd said.
        #[source]
        source: zbus::Error,
    },
}

/// The state of one unit, as `systemctl show -p LoadState,ActiveState,SubState` would print it.
///
/// A unit systemd does not know has `load_state == "not-found"`: that is a state, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitState {
    /// `loaded`, `not-found`, `bad-setting`, `error`, `masked`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, `deactivating`, `reloading`, ...
    pub active_state: String,
    /// The unit type's own state: `running`, `exited`, `dead`, `start-pre`, ...
    pub sub_state: String,
}

impl UnitState {
    /// Whether systemd has a unit file for it (loaded, or loaded with errors, or masked).
    pub fn is_installed(&self) -> bool {
        self.load_state != "not-found"
    }

    /// Whether the unit is loaded and active (a service running, or a oneshot that has exited successfully).
    pub fn is_active(&self) -> bool {
        self.load_state == "loaded" && self.active_state == "active"
    }
}

impl fmt::Display for UnitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.load_state, self.active_state, self.sub_state)
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// Loads the unit if needed and returns its object; a missing unit yields an object whose LoadState is
    /// `not-found` (GetUnit would fail instead).
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// Reboots the machine the orderly way (stops all units first).
    fn reboot(&self) -> zbus::Result<()>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Unit", default_service = "org.freedesktop.systemd1")]
trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
}

/// A connection to systemd's manager on the system bus.
#[derive(Debug, Clone)]
pub struct Systemd {
    connection: zbus::Connection,
}

impl Systemd {
    /// Connects to the system bus.
    pub async fn connect() -> Result<Self, SystemdError> {
        let connection = zbus::Connection::system().await.map_err(SystemdError::Connect)?;
        Ok(Self { connection })
    }

    async fn manager(&self) -> Result<ManagerProxy<'_>, SystemdError> {
        ManagerProxy::new(&self.connection).await.map_err(|source| SystemdError::Call { method: "Manager", source })
    }

    /// The load, active and sub state of `unit` (e.g. `bulkheadd.service`). A unit that does not exist is
    /// reported with `load_state` `not-found`, not as an error.
    #[tracing::instrument(skip(self))]
    pub async fn unit_state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let path = self
            .manager()
            .await?
            .load_unit(unit)
            .await
            .map_err(|source| SystemdError::Call { method: "LoadUnit", source })?;
        let err = |source| SystemdError::Unit { unit: unit.to_owned(), source };
        // One-shot reads: caching would subscribe to change signals we never look at.
        let proxy = UnitProxy::builder(&self.connection)
            .path(path)
            .map_err(err)?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(err)?;
        Ok(UnitState {
            load_state: proxy.load_state().await.map_err(err)?,
            active_state: proxy.active_state().await.map_err(err)?,
            sub_state: proxy.sub_state().await.map_err(err)?,
        })
    }

    /// Asks systemd to reboot the machine (org.freedesktop.systemd1.Manager.Reboot): units are stopped in
    /// order, then the machine restarts. Returns once systemd has accepted the job.
    #[tracing::instrument(skip(self))]
    pub async fn reboot(&self) -> Result<(), SystemdError> {
        self.manager().await?.reboot().await.map_err(|source| SystemdError::Call { method: "Reboot", source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(load: &str, active: &str, sub: &str) -> UnitState {
        UnitState { load_state: load.into(), active_state: active.into(), sub_state: sub.into() }
    }

    #[test]
    fn a_missing_unit_is_neither_installed_nor_active() {
        let s = state("not-found", "inactive", "dead");
        assert!(!s.is_installed());
        assert!(!s.is_active());
    }

    #[test]
    fn only_loaded_and_active_counts_as_active() {
        assert!(state("loaded", "active", "running").is_active());
        assert!(state("loaded", "active", "exited").is_active());
        assert!(!state("loaded", "failed", "failed").is_active());
        assert!(!state("loaded", "activating", "start").is_active());
        assert!(!state("masked", "active", "running").is_active());
        assert!(state("masked", "inactive", "dead").is_installed());
    }

    #[test]
    fn displays_like_systemctl_columns() {
        assert_eq!(state("loaded", "active", "running").to_string(), "loaded/active/running");
    }
}
