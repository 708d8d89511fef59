//! bulkheadd's configuration file (`/etc/bulkhead/bulkheadd.toml` by default). Every field has a default, so an
//! absent file means the defaults; an unknown key is an error, so a typo never passes unnoticed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::manager::ManagerConfig;
use crate::zone::VirtMode;
use bulkhead_oci::pull::{Registries, RegistryConfig};

/// Where the daemon looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bulkhead/bulkheadd.toml";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Persistent state (zone records, images).
    pub state_dir: PathBuf,
    /// The control API's unix socket.
    pub control_socket: PathBuf,
    /// Zone defaults.
    pub zone: ZoneDefaults,
    /// `[registries."<host>"]`: mirrors, plain HTTP and credentials per registry host ("docker.io" for
    /// Docker Hub), e.g. `[registries."docker.io"]` with `mirrors = ["mirror.internal:5000"]`.
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// `[zone]`: what zones get when their spec does not say.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ZoneDefaults {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs holding the zone init.
    pub initrd: PathBuf,
    /// What `auto` means on this node: `detect` (PVH with HVM + HAP, else PV), `pv` or `pvh`. Set `pv` where
    /// Xen reports HVM + HAP that cannot boot PVH guests, as under software emulation.
    pub auto_virt_mode: AutoVirtMode,
}

/// The node's answer for `virt_mode = auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoVirtMode {
    /// From the host's capabilities.
    Detect,
    /// Always PV.
    Pv,
    /// Always PVH (refused on hosts that cannot).
    Pvh,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: "/var/lib/bulkhead".into(),
            control_socket: "/run/bulkhead/control.sock".into(),
            zone: ZoneDefaults::default(),
            registries: BTreeMap::new(),
        }
    }
}

impl Default for ZoneDefaults {
    fn default() -> Self {
        ZoneDefaults {
            kernel: "/usr/lib/bulkhead/zone/kernel".into(),
            initrd: "/usr/lib/bulkhead/zone/initrd".into(),
            auto_virt_mode: AutoVirtMode::Detect,
        }
    }
}

/// Problems with the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A `[registries]` entry is unusable.
    #[error("{path}: {message}")]
    Registry {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("{path}: {field} must be an absolute path, not {value:?}")]
    RelativePath {
        /// The file.
        path: PathBuf,
        /// The key.
        field: &'static str,
        /// The value given.
        value: PathBuf,
    },
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(ConfigError::Read(path.to_owned(), e)),
        };
        Config::parse(path, &text)
    }

    /// Parses and validates `text` (named `path` in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string().trim().to_owned() })?;
        for (field, value) in [
            ("state-dir", &cfg.state_dir),
            ("control-socket", &cfg.control_socket),
            ("zone.kernel", &cfg.zone.kernel),
            ("zone.initrd", &cfg.zone.initrd),
        ] {
            if !value.is_absolute() {
                return Err(ConfigError::RelativePath { path: path.to_owned(), field, value: value.clone() });
            }
        }
        for (host, r) in &cfg.registries {
            r.validate(host).map_err(|message| ConfigError::Registry { path: path.to_owned(), message })?;
        }
        Ok(cfg)
    }

    /// How the image store reaches registries.
    pub fn registries(&self) -> Registries {
        Registries::new(self.registries.clone())
    }

    /// The zone manager's part.
    pub fn manager(&self) -> ManagerConfig {
        ManagerConfig {
            auto_virt_mode: match self.zone.auto_virt_mode {
                AutoVirtMode::Detect => None,
                AutoVirtMode::Pv => Some(VirtMode::Pv),
                AutoVirtMode::Pvh => Some(VirtMode::Pvh),
            },
            ..ManagerConfig::new(self.zone.kernel.clone(), self.zone.initrd.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/bulkhead/bulkheadd.toml"), text)
    }

    #[test]
    fn empty_and_missing_files_give_the_defaults() -> Result<(), ConfigError> {
        assert_eq!(parse("")?, Config::default());
        let dir = tempfile::tempdir().map_err(|e| ConfigError::Read("tmp".into(), e))?;
        assert_eq!(Config::load(&dir.path().join("absent.toml"))?, Config::default());
        Ok(())
    }

    #[test]
    fn values_override_defaults() -> Result<(), ConfigError> {
        let c = parse("state-dir = \"/srv/bh\"\n[zone]\nauto-virt-mode = \"pv\"\n")?;
        assert_eq!(c.state_dir, PathBuf::from("/srv/bh"));
        assert_eq!(c.zone.kernel, ZoneDefaults::default().kernel);
        assert_eq!(c.manager().auto_virt_mode, Some(VirtMode::Pv));
        assert_eq!(Config::default().manager().auto_virt_mode, None);
        let c = parse(
            "[registries.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\"]\n\
             [registries.\"127.0.0.1:5000\"]\ninsecure = true\nusername = \"u\"\npassword = \"p\"\n",
        )?;
        assert_eq!(c.registries["docker.io"].mirrors, ["127.0.0.1:5000"]);
        assert!(c.registries["127.0.0.1:5000"].insecure);
        Ok(())
    }

    #[test]
    fn typos_and_bad_values_are_errors_that_point_at_the_problem() {
        let e = parse("state_dir = \"/x\"\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unknown field") && e.contains("state_dir"), "{e}");
        let e = parse("[zone]\nauto-virt-mode = \"fast\"\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("fast"), "{e}");
        let e = parse("[zone]\nkernel = \"vmlinux\"\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("zone.kernel must be an absolute path"), "{e}");
        let e = parse("[registries.\"docker.io\"]\nmirrors = [\"http://m\"]\n").err().map(|e| e.to_string());
        assert!(e.as_deref().unwrap_or_default().contains("mirrors"), "{e:?}");
        let e = parse("[registries.\"r.example\"]\ninsecur = true\n").err().map(|e| e.to_string());
        assert!(e.as_deref().unwrap_or_default().contains("unknown field"), "{e:?}");
    }
}
