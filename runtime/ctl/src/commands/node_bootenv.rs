//! The A/B boot state GRUB and `bulkhead node` share: GRUB's environment block (`/grub/grubenv` on the ESP)
//! and the rules both sides apply to it.
//!
//! Variables: `good_slot` (the slot known to work), `trial_slot` and `trial_tries` (a freshly written slot
//! GRUB boots while tries remain, counting one down before each boot; image/finalize's grub.cfg), and
//! `failed_slot` (the last trial that never became good, for `bulkhead node status`).

use std::fmt;
use std::str::FromStr;

/// GRUB's environment block is exactly this long; GRUB rewrites it in place and never resizes it.
pub const GRUBENV_SIZE: usize = 1024;
const GRUBENV_HEADER: &str = "# GRUB Environment Block\n";
/// GRUB's grub.cfg spells out a countdown from this many tries (it cannot do arithmetic).
pub const MAX_TRIES: u8 = 3;

/// A malformed environment block or a state change the rules forbid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootEnvError {
    /// The block is not 1024 bytes (GRUB would refuse to write it).
    #[error("GRUB's environment block is {0} bytes, not {GRUBENV_SIZE}: recreate it with grub-editenv")]
    Size(usize),
    /// The block does not start with GRUB's header.
    #[error("GRUB's environment block has no '# GRUB Environment Block' header: recreate it with grub-editenv")]
    Header,
    /// A line is not `name=value`.
    #[error("GRUB's environment block has a malformed line {0:?}")]
    Line(String),
    /// The variables do not fit into the block.
    #[error("the boot state does not fit into GRUB's {GRUBENV_SIZE}-byte environment block")]
    TooLong,
    /// A variable holds something other than a slot name.
    #[error("{name}={value:?} in GRUB's environment is not a slot (a or b)")]
    BadSlot {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// `trial_tries` is not a number GRUB's countdown knows.
    #[error("trial_tries={0:?} in GRUB's environment is not 0..={MAX_TRIES}")]
    BadTries(String),
    /// An upgrade would overwrite the slot the node is running.
    #[error("slot {0} is the running slot; an upgrade writes only the other slot")]
    TargetIsRunning(Slot),
    /// An upgrade would overwrite the good slot (the running slot is on trial and not yet good).
    #[error(
        "slot {0} is the last known good slot and the running slot is still on trial: wait for `bulkhead node mark-good` (or reboot back to slot {0})"
    )]
    TargetIsGood(Slot),
    /// Tries outside 1..=MAX_TRIES.
    #[error("tries must be 1..={MAX_TRIES}, not {0}")]
    Tries(u8),
}

/// One of the two OS slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Partitions `bulkhead-root-a{,-verity}`, ESP `/bulkhead/a/`.
    A,
    /// Partitions `bulkhead-root-b{,-verity}`, ESP `/bulkhead/b/`.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The name GRUB, the kernel command line and partition labels use.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Slot {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            _ => Err(()),
        }
    }
}

/// GRUB's environment block: ordered `name=value` pairs. Variables this module does not know are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: Vec<(String, String)>,
}

impl GrubEnv {
    /// Parses a block as GRUB writes it: the header, `name=value` lines, `#` padding to 1024 bytes.
    pub fn parse(block: &[u8]) -> Result<Self, BootEnvError> {
        if block.len() != GRUBENV_SIZE {
            return Err(BootEnvError::Size(block.len()));
        }
        let text = String::from_utf8_lossy(block);
        let body = text.strip_prefix(GRUBENV_HEADER).ok_or(BootEnvError::Header)?;
        let mut env = GrubEnv::default();
        for line in body.split('\n') {
            // The padding is '#' to the end of the block; GRUB ignores lines starting with '#'.
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once('=').ok_or_else(|| BootEnvError::Line(line.to_owned()))?;
            if name.is_empty() {
                return Err(BootEnvError::Line(line.to_owned()));
            }
            env.set(name, value);
        }
        Ok(env)
    }

    /// The block GRUB reads, padded to exactly 1024 bytes.
    pub fn to_block(&self) -> Result<Vec<u8>, BootEnvError> {
        let mut out = GRUBENV_HEADER.as_bytes().to_vec();
        for (name, value) in &self.vars {
            out.extend_from_slice(format!("{name}={value}\n").as_bytes());
        }
        if out.len() > GRUBENV_SIZE {
            return Err(BootEnvError::TooLong);
        }
        out.resize(GRUBENV_SIZE, b'#');
        Ok(out)
    }

    /// A variable's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Sets a variable, keeping its place if it exists. Values here are slot names and small numbers, which
    /// need none of GRUB's escaping.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.vars.push((name.to_owned(), value.to_owned())),
        }
    }
}

/// The A/B state in the environment block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BootState {
    /// The slot GRUB boots when no trial is pending.
    pub good: Slot,
    /// A slot on trial and the boots it has left.
    pub trial: Option<(Slot, u8)>,
    /// The last trial that was given up.
    pub failed: Option<Slot>,
}

/// What `mark_good` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkOutcome {
    /// The running slot was on trial and is now the good slot.
    Promoted(Slot),
    /// The running slot is the good slot and a trial of the other slot ran out: it is recorded as failed.
    TrialFailed(Slot),
    /// The running slot is the good slot; nothing changed.
    AlreadyGood,
    /// The running slot is neither good nor on trial (chosen by hand in GRUB's menu); nothing changed.
    NotTracked,
}

fn slot_var(env: &GrubEnv, name: &'static str) -> Result<Option<Slot>, BootEnvError> {
    match env.get(name) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|()| BootEnvError::BadSlot { name, value: v.to_owned() }),
    }
}

impl BootState {
    /// Reads the state; a block without `good_slot` means slot A (the built image), as grub.cfg assumes.
    pub fn from_env(env: &GrubEnv) -> Result<Self, BootEnvError> {
        let good = slot_var(env, "good_slot")?.unwrap_or(Slot::A);
        let tries = match env.get("trial_tries") {
            None | Some("") => 0,
            Some(t) => {
                t.parse::<u8>().ok().filter(|n| *n <= MAX_TRIES).ok_or_else(|| BootEnvError::BadTries(t.to_owned()))?
            }
        };
        let trial = slot_var(env, "trial_slot")?.map(|s| (s, tries));
        Ok(BootState { good, trial, failed: slot_var(env, "failed_slot")? })
    }

    /// Writes the state into `env`, leaving other variables alone.
    pub fn to_env(&self, env: &mut GrubEnv) {
        env.set("good_slot", self.good.name());
        env.set("trial_slot", self.trial.map_or("", |(s, _)| s.name()));
        env.set("trial_tries", &self.trial.map_or(0, |(_, n)| n).to_string());
        env.set("failed_slot", self.failed.map_or("", Slot::name));
    }

    /// Checks that an upgrade running on `running` may write `target`: never the running slot, and never
    /// the good slot while the running one is still on trial (that would leave no known good slot).
    pub fn check_target(&self, running: Slot, target: Slot) -> Result<(), BootEnvError> {
        if target == running {
            return Err(BootEnvError::TargetIsRunning(target));
        }
        if target == self.good {
            return Err(BootEnvError::TargetIsGood(target));
        }
        Ok(())
    }

    /// Before a slot is written: GRUB must not boot it half-written, so a trial of it is withdrawn.
    pub fn disarm(&mut self, target: Slot) {
        if self.trial.is_some_and(|(s, _)| s == target) {
            self.trial = None;
        }
    }

    /// After a slot is written: GRUB boots it for up to `tries` boots, then returns to the good slot.
    pub fn arm_trial(&mut self, target: Slot, tries: u8) -> Result<(), BootEnvError> {
        if target == self.good {
            return Err(BootEnvError::TargetIsGood(target));
        }
        if tries == 0 || tries > MAX_TRIES {
            return Err(BootEnvError::Tries(tries));
        }
        self.trial = Some((target, tries));
        self.failed = None;
        Ok(())
    }

    /// Run on every boot of `running` once its services are healthy (or, on the good slot, just once it is up).
    pub fn mark_good(&mut self, running: Slot) -> MarkOutcome {
        match self.trial {
            Some((s, _)) if s == running => {
                self.good = running;
                self.trial = None;
                self.failed = None;
                MarkOutcome::Promoted(running)
            }
            _ if running != self.good => MarkOutcome::NotTracked,
            Some((s, 0)) => {
                self.trial = None;
                self.failed = Some(s);
                MarkOutcome::TrialFailed(s)
            }
            _ => MarkOutcome::AlreadyGood,
        }
    }

    /// What image/finalize's grub.cfg does at boot: the slot it boots, and the state it saves. Here so the
    /// rules are tested together; the real decision is GRUB's.
    pub fn grub_boot(&mut self) -> Slot {
        match &mut self.trial {
            Some((slot, tries)) if *tries > 0 => {
                *tries -= 1;
                *slot
            }
            _ => self.good,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Result<(), Box<dyn std::error::Error>>;

    /// What `grub-editenv FILE create; grub-editenv FILE set good_slot=a trial_slot= trial_tries=0` writes.
    fn built_block() -> Vec<u8> {
        let mut b = b"# GRUB Environment Block\ngood_slot=a\ntrial_slot=\ntrial_tries=0\n".to_vec();
        b.resize(1024, b'#');
        b
    }

    #[test]
    fn grub_editenv_blocks_round_trip() -> R {
        let env = GrubEnv::parse(&built_block())?;
        assert_eq!(env.get("good_slot"), Some("a"));
        assert_eq!(env.get("trial_slot"), Some(""));
        assert_eq!(env.to_block()?, built_block());
        let st = BootState::from_env(&env)?;
        assert_eq!(st, BootState { good: Slot::A, trial: None, failed: None });
        Ok(())
    }

    #[test]
    fn malformed_blocks_are_refused() {
        assert_eq!(GrubEnv::parse(&built_block()[..1000]), Err(BootEnvError::Size(1000)));
        let mut b = built_block();
        b[0] = b'X';
        assert_eq!(GrubEnv::parse(&b), Err(BootEnvError::Header));
        let mut b = b"# GRUB Environment Block\nno-equals-sign\n".to_vec();
        b.resize(1024, b'#');
        assert!(matches!(GrubEnv::parse(&b), Err(BootEnvError::Line(_))));
        let mut env = GrubEnv::default();
        env.set("good_slot", "c");
        assert!(matches!(BootState::from_env(&env), Err(BootEnvError::BadSlot { name: "good_slot", .. })));
        env.set("good_slot", "a");
        env.set("trial_tries", "7");
        assert!(matches!(BootState::from_env(&env), Err(BootEnvError::BadTries(_))));
        env.set("padding", &"x".repeat(1000));
        assert_eq!(env.to_block(), Err(BootEnvError::TooLong));
    }

    #[test]
    fn unknown_variables_survive_a_state_change() -> R {
        let mut env = GrubEnv::parse(&built_block())?;
        env.set("saved_entry", "operator");
        let mut st = BootState::from_env(&env)?;
        st.arm_trial(Slot::B, 1)?;
        st.to_env(&mut env);
        let env = GrubEnv::parse(&env.to_block()?)?;
        assert_eq!(env.get("saved_entry"), Some("operator"));
        assert_eq!(BootState::from_env(&env)?.trial, Some((Slot::B, 1)));
        Ok(())
    }

    #[test]
    fn an_upgrade_never_targets_the_running_or_the_only_good_slot() -> R {
        let st = BootState { good: Slot::A, trial: None, failed: None };
        assert_eq!(st.check_target(Slot::A, Slot::A), Err(BootEnvError::TargetIsRunning(Slot::A)));
        st.check_target(Slot::A, Slot::B)?;
        // Running B on trial: A is the only known good slot and must not be overwritten.
        let st = BootState { good: Slot::A, trial: Some((Slot::B, 0)), failed: None };
        assert_eq!(st.check_target(Slot::B, Slot::A), Err(BootEnvError::TargetIsGood(Slot::A)));
        let mut st = BootState { good: Slot::A, trial: None, failed: None };
        assert_eq!(st.arm_trial(Slot::A, 1), Err(BootEnvError::TargetIsGood(Slot::A)));
        assert_eq!(st.arm_trial(Slot::B, 0), Err(BootEnvError::Tries(0)));
        assert_eq!(st.arm_trial(Slot::B, 4), Err(BootEnvError::Tries(4)));
        Ok(())
    }

    #[test]
    fn a_healthy_trial_becomes_the_good_slot() -> R {
        let mut st = BootState { good: Slot::A, trial: None, failed: Some(Slot::B) };
        st.disarm(Slot::B);
        st.arm_trial(Slot::B, 1)?;
        assert_eq!(st.grub_boot(), Slot::B);
        assert_eq!(st.mark_good(Slot::B), MarkOutcome::Promoted(Slot::B));
        assert_eq!(st, BootState { good: Slot::B, trial: None, failed: None });
        assert_eq!(st.grub_boot(), Slot::B, "later boots stay on the new slot");
        assert_eq!(st.mark_good(Slot::B), MarkOutcome::AlreadyGood);
        Ok(())
    }

    #[test]
    fn tries_count_down_then_grub_returns_to_the_good_slot() -> R {
        let mut st = BootState { good: Slot::B, trial: None, failed: None };
        st.arm_trial(Slot::A, 2)?;
        // The broken slot's services fail: it reboots without mark_good, twice.
        assert_eq!(st.grub_boot(), Slot::A);
        assert_eq!(st.grub_boot(), Slot::A);
        assert_eq!(st.trial, Some((Slot::A, 0)));
        assert_eq!(st.grub_boot(), Slot::B, "no tries left: back to the good slot");
        assert_eq!(st.mark_good(Slot::B), MarkOutcome::TrialFailed(Slot::A));
        assert_eq!(st, BootState { good: Slot::B, trial: None, failed: Some(Slot::A) });
        assert_eq!(st.grub_boot(), Slot::B);
        // A slot chosen by hand in GRUB's menu is neither promoted nor recorded.
        assert_eq!(st.mark_good(Slot::A), MarkOutcome::NotTracked);
        Ok(())
    }
}
