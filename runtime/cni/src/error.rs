use std::path::PathBuf;
use std::time::Duration;

/// What went wrong loading a network config, running a plugin or handling a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The conf dir holds no `*.conf`, `*.conflist` or `*.json` file.
    #[error("no CNI network config in {dir} (*.conflist, *.conf or *.json): install one (e.g. a bridge conflist)")]
    NoConfig {
        /// The conf dir.
        dir: PathBuf,
    },
    /// The conf dir or a config file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A config file is larger than this client reads.
    #[error("CNI config {path} is larger than {limit} bytes")]
    ConfigTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A config file is not valid JSON or lacks what CNI requires.
    #[error("invalid CNI config {path}: {reason}")]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field's name.
        reason: String,
    },
    /// A plugin the config names is in none of the bin dirs.
    #[error("CNI plugin {plugin:?} (network {network:?}) not found in {dirs}: install it there")]
    PluginNotFound {
        /// The plugin's `type`.
        plugin: String,
        /// The network that names it.
        network: String,
        /// The dirs searched, comma-separated.
        dirs: String,
    },
    /// A runtime parameter (container id, interface name, netns name) breaks CNI's rules.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The plugin binary could not be started or its pipes failed.
    #[error("running CNI plugin {plugin} ({command}): {source}")]
    Spawn {
        /// The plugin's `type`.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin did not finish in time; it was killed.
    #[error("CNI plugin {plugin} ({command}) did not finish within {after:?} and was killed")]
    Timeout {
        /// The plugin's `type`.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The plugin failed and said why in CNI's error format.
    #[error("CNI plugin {plugin} ({command}) failed: {msg}{}", details_suffix(details))]
    Plugin {
        /// The plugin's `type`.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// CNI's error code (1-99 well known, 100+ plugin-specific).
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details, possibly empty.
        details: String,
    },
    /// The plugin failed without a CNI error on stdout.
    #[error("CNI plugin {plugin} ({command}) failed ({status}): {stderr}")]
    PluginFailed {
        /// The plugin's `type`.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// Its exit status.
        status: String,
        /// The end of its stderr (bounded), or a note that it wrote nothing.
        stderr: String,
    },
    /// The plugin wrote more than the client reads.
    #[error("CNI plugin {plugin} ({command}) wrote more than {limit} bytes to stdout")]
    OutputTooLarge {
        /// The plugin's `type`.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The plugin succeeded but its result is not a CNI result this client understands.
    #[error("CNI plugin {plugin} returned an invalid result: {reason}")]
    BadResult {
        /// The plugin's `type`.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// Creating, opening or deleting a network namespace failed.
    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        /// The namespace's bind mount.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An iproute2 command (`ip`, `tc`) that plumbs a zone's interface failed.
    #[error("{command} failed: {stderr}")]
    Link {
        /// The command line.
        command: String,
        /// What it said (bounded), or why it could not run.
        stderr: String,
    },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() { String::new() } else { format!(" ({details})") }
}
