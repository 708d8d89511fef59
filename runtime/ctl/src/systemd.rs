//! systemd's manager on the D-Bus system bus: a unit's state and a reboot, asked of
//! `org.freedesktop.systemd1` directly, so callers get typed answers rather than systemctl's text.

use std::fmt;

use serde::Serialize;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

/// A failed exchange with systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The system bus could not be reached.
    #[error("cannot connect to the D-Bus system bus: is dbus running, and are you root?")]
    Connect(#[source] zbus::Error),
    /// A method call on systemd's manager failed.
    #[error("systemd's {method} call failed")]
    Call {
        /// The D-Bus method.
        method: &'static str,
        /// What D-Bus or systemd answered.
        #[source]
        source: zbus::Error,
    },
    /// A unit's properties could not be read.
    #[error("cannot read the state of unit {unit}")]
    Unit {
        /// The unit.
        unit: String,
        /// What D-Bus or systemd answered.
        #[source]
        source: zbus::Error,
    },
}

/// A unit's load, active and sub state, as `systemctl show` names them. A unit systemd does not know has
/// `load_state` `not-found`; that is a state, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitState {
    /// `loaded`, `not-found`, `masked`, ...
    pub load_state: String,
    /// `active`, `activating`, `failed`, `inactive`, ...
    pub active_state: String,
    /// The unit type's own state: `running`, `exited`, `auto-restart`, ...
    pub sub_state: String,
}

impl UnitState {
    /// Whether systemd has a unit file for it (loaded, or loaded with errors, or masked).
    pub fn is_installed(&self) -> bool {
        self.load_state != "not-found"
    }

    /// Loaded and active: a running service, or a oneshot that finished successfully.
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
    /// The unit's object, loading it if needed (a missing unit gives an object with LoadState `not-found`,
    /// where GetUnit would fail).
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a job for `name`; returns the job's object.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
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

/// A connection to systemd on the system bus.
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

    /// The state of `unit` (e.g. `bulkheadd.service`).
    #[tracing::instrument(skip(self))]
    pub async fn unit_state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let path = self
            .manager()
            .await?
            .load_unit(unit)
            .await
            .map_err(|source| SystemdError::Call { method: "LoadUnit", source })?;
        let err = |source| SystemdError::Unit { unit: unit.to_owned(), source };
        // Read once: a caching proxy would subscribe to change signals nobody reads.
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

    /// Asks systemd for an orderly reboot, as `systemctl reboot` does: starts `reboot.target`, which stops
    /// every unit first. (The manager's Reboot method would skip that and reboot at once.) Returns once
    /// systemd has queued the job; `replace-irreversibly` keeps later jobs from cancelling it.
    #[tracing::instrument(skip(self))]
    pub async fn reboot(&self) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .start_unit("reboot.target", "replace-irreversibly")
            .await
            .map(drop)
            .map_err(|source| SystemdError::Call { method: "StartUnit(reboot.target)", source })
    }
}
