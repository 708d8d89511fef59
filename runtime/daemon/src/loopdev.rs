//! Loop devices for disk images: Xen's kernel block backend (blkback) serves block devices, not files, so an
//! image file is exported to a zone through a read-only loop device.
//!
//! Every loop device is set up with `LO_FLAGS_AUTOCLEAR`: the kernel detaches it by itself when its last opener
//! closes it. The daemon holds the only open file descriptor ([`LoopAttachment`]) until blkback has opened the
//! device too, then drops it; from then on the device lives exactly as long as blkback uses it. Removing the
//! disk or destroying the domain releases it, and nothing leaks if the daemon crashes: a crash before blkback
//! opened it closes the daemon's descriptor, which clears the device at once.
//!
//! One window remains: the `loopdev-3` crate binds the file (`LOOP_SET_FD`) and sets the flags
//! (`LOOP_SET_STATUS64`) in two ioctls, so a crash between the two (microseconds) leaves a bound loop device
//! without autoclear. `losetup -a` shows it; `losetup -d` removes it.

use std::io;
use std::path::{Path, PathBuf};

use loopdev::{LoopControl, LoopDevice};

/// How often attaching is retried when another process takes the free device first.
const BUSY_RETRIES: usize = 8;

/// Loop device failures.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The image path cannot be used.
    #[error("image {path}: {reason}")]
    BadImage {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `/dev/loop-control` could not be opened or asked for a free device.
    #[error("no free loop device (is the loop module loaded and /dev/loop-control present?): {0}")]
    NoFreeDevice(#[source] io::Error),
    /// Binding the image to the loop device failed.
    #[error("attaching {path} to a loop device")]
    Attach {
        /// The image.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A loop device bound read-only and with autoclear to an image file, held open. Dropping it closes the
/// descriptor: if nobody else (blkback) has the device open, the kernel detaches it then.
#[derive(Debug)]
pub struct LoopAttachment {
    device: LoopDevice,
    path: PathBuf,
    image: PathBuf,
}

impl LoopAttachment {
    /// The device node, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image file behind it.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The backing file the kernel reports for this device (`/sys/block/loopN/loop/backing_file`).
    pub fn backing_file(&self) -> Option<PathBuf> {
        backing_file(&self.path)
    }

    /// Detaches the device right away (`LOOP_CLR_FD`) instead of relying on autoclear. With autoclear set
    /// the kernel defers this until the last opener (blkback) closes the device; only meant for error paths
    /// where nothing else can have opened it.
    pub fn detach(self) -> io::Result<()> {
        self.device.detach()
    }
}

/// The file a loop device is bound to, from sysfs (`None`: the device is not bound, or is no loop device).
pub fn backing_file(dev: &Path) -> Option<PathBuf> {
    let name = dev.file_name()?.to_str()?;
    let raw = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(raw.trim_end_matches('\n')))
}

/// Checks that `image` can be attached: an absolute path to a regular file.
pub fn check_image(image: &Path) -> Result<(), LoopError> {
    let bad = |reason: &str| LoopError::BadImage { path: image.to_owned(), reason: reason.to_owned() };
    if !image.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    let meta = std::fs::metadata(image).map_err(|e| bad(&format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file"));
    }
    Ok(())
}

/// Binds `image` read-only to a free loop device with autoclear and returns it, still open. Blocking (a few
/// ioctls); call it from a blocking context.
pub fn attach_read_only(image: &Path) -> Result<LoopAttachment, LoopError> {
    check_image(image)?;
    let control = LoopControl::open().map_err(LoopError::NoFreeDevice)?;
    let mut attempt = 0;
    loop {
        let device = control.next_free().map_err(LoopError::NoFreeDevice)?;
        // read_only opens the image O_RDONLY, which makes the kernel mark the device read-only.
        match device.with().read_only(true).autoclear(true).attach(image) {
            Ok(()) => {
                let Some(path) = device.path() else {
                    let _ = device.detach();
                    return Err(LoopError::Attach {
                        path: image.to_owned(),
                        source: io::Error::other("the loop device's path could not be read back"),
                    });
                };
                tracing::debug!(image = %image.display(), dev = %path.display(), "loop device attached");
                return Ok(LoopAttachment { device, path, image: image.to_owned() });
            }
            // Another process bound the device between next_free and our ioctl: take the next one.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) && attempt < BUSY_RETRIES => {
                attempt += 1
            }
            Err(source) => return Err(LoopError::Attach { path: image.to_owned(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_must_be_absolute_regular_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let msg = |r: Result<(), LoopError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(check_image(Path::new("relative.img"))).contains("must be an absolute path"));
        assert!(msg(check_image(&dir.path().join("missing.img"))).contains("cannot be read"));
        assert!(msg(check_image(dir.path())).contains("is not a regular file"));
        let img = dir.path().join("ok.img");
        std::fs::write(&img, [0u8; 4096])?;
        assert!(check_image(&img).is_ok());
        Ok(())
    }

    #[test]
    fn backing_file_of_a_non_loop_device_is_none() {
        assert_eq!(backing_file(Path::new("/dev/null")), None);
        assert_eq!(backing_file(Path::new("/")), None);
    }

    /// Needs root and loop devices (the build host has them; run with --ignored as root).
    #[test]
    #[ignore = "needs root and loop devices"]
    fn autoclear_releases_the_device_when_the_last_opener_closes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let img = dir.path().join("img");
        std::fs::write(&img, vec![0u8; 1 << 20])?;
        let lo = attach_read_only(&img)?;
        let dev = lo.path().to_owned();
        assert_eq!(lo.backing_file().as_deref(), Some(img.as_path()));
        let name = dev.file_name().and_then(|n| n.to_str()).ok_or("no name")?.to_owned();
        assert_eq!(std::fs::read_to_string(format!("/sys/block/{name}/ro"))?.trim(), "1", "read-only");
        assert_eq!(std::fs::read_to_string(format!("/sys/block/{name}/loop/autoclear"))?.trim(), "1");
        // Another opener keeps it alive past our close...
        let other = std::fs::File::open(&dev)?;
        drop(lo);
        assert_eq!(backing_file(&dev).as_deref(), Some(img.as_path()));
        // ...and its close releases it.
        drop(other);
        for _ in 0..100 {
            if backing_file(&dev).is_none() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(format!("{} still bound after its last opener closed", dev.display()).into())
    }
}
