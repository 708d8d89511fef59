//! Showing a pull's progress: one bar per layer on a terminal ([`Bars`]), one line per finished step
//! otherwise ([`Plain`]), so logs and pipes get a readable record instead of redraw sequences.

use std::io::{self, Write};

use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::pull_image_response::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::commands::image::human_size;

/// What a pull's messages are shown with.
pub trait PullView {
    /// Shows one progress message (everything but the final image).
    fn event(&mut self, e: &Event) -> io::Result<()>;
    /// The pull ended (successfully or not): stop drawing.
    fn finish(&mut self);
}

/// "sha256:0123456789abcdef..." → "0123456789ab".
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// One line per step: resolved, each layer when complete, building.
#[derive(Debug)]
pub struct Plain<W: Write> {
    out: W,
    layers: Vec<pb::PullLayer>,
    shown: Vec<bool>,
}

impl<W: Write> Plain<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        Plain { out, layers: Vec::new(), shown: Vec::new() }
    }

    /// The writer, back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> PullView for Plain<W> {
    fn event(&mut self, e: &Event) -> io::Result<()> {
        match e {
            Event::Resolved(r) => {
                let total: u64 = r.layers.iter().map(|l| l.size_bytes).sum();
                let n = r.layers.len();
                writeln!(
                    self.out,
                    "resolved {} ({n} layer{}, {})",
                    r.id,
                    if n == 1 { "" } else { "s" },
                    human_size(total)
                )?;
                self.layers = r.layers.clone();
                self.shown = vec![false; n];
            }
            Event::Layer(l) => {
                let i = usize::try_from(l.index).unwrap_or(usize::MAX);
                if l.done_bytes < l.total_bytes || self.shown.get(i).is_none_or(|s| *s) {
                    return Ok(());
                }
                self.shown[i] = true;
                let digest = self.layers.get(i).map(|d| short(&d.digest)).unwrap_or("?");
                let how = if l.cached { "already here" } else { "downloaded" };
                writeln!(
                    self.out,
                    "layer {}/{} {digest}: {} {how}",
                    i + 1,
                    self.layers.len(),
                    human_size(l.total_bytes)
                )?;
            }
            Event::Building(_) => writeln!(self.out, "building the root image")?,
            Event::Image(_) => {}
        }
        self.out.flush()
    }

    fn finish(&mut self) {
        let _ = self.out.flush();
    }
}

/// One progress bar per layer, then a spinner while the root image is built (on stderr).
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
    spinner: Option<ProgressBar>,
}

impl Default for Bars {
    fn default() -> Self {
        Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), bars: Vec::new(), spinner: None }
    }
}

impl PullView for Bars {
    fn event(&mut self, e: &Event) -> io::Result<()> {
        match e {
            Event::Resolved(r) => {
                let style = ProgressStyle::with_template("{prefix} [{bar:32}] {bytes:>10}/{total_bytes:<10} {msg}")
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                for l in &r.layers {
                    let bar = self.multi.add(ProgressBar::new(l.size_bytes));
                    bar.set_style(style.clone());
                    bar.set_prefix(short(&l.digest).to_owned());
                    self.bars.push(bar);
                }
            }
            Event::Layer(l) => {
                if let Some(bar) = usize::try_from(l.index).ok().and_then(|i| self.bars.get(i)) {
                    bar.set_position(l.done_bytes);
                    if l.done_bytes >= l.total_bytes {
                        bar.finish_with_message(if l.cached { "already here" } else { "done" });
                    }
                }
            }
            Event::Building(_) => {
                let spinner = self.multi.add(ProgressBar::new_spinner());
                spinner.set_message("building the root image");
                spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                self.spinner = Some(spinner);
            }
            Event::Image(_) => {}
        }
        Ok(())
    }

    fn finish(&mut self) {
        for b in &self.bars {
            if !b.is_finished() {
                b.abandon();
            }
        }
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(index: u32, done: u64, total: u64, cached: bool) -> Event {
        Event::Layer(pb::PullLayerProgress { index, done_bytes: done, total_bytes: total, cached })
    }

    #[test]
    fn plain_lines_name_each_step_once() -> io::Result<()> {
        let mut v = Plain::new(Vec::new());
        let layers = vec![
            pb::PullLayer { digest: format!("sha256:{}", "a".repeat(64)), size_bytes: 2048 },
            pb::PullLayer { digest: format!("sha256:{}", "b".repeat(64)), size_bytes: 10 },
        ];
        v.event(&Event::Resolved(pb::PullResolved { id: "sha256:1234".into(), layers }))?;
        for e in [
            layer(0, 1024, 2048, false),
            layer(1, 10, 10, true),
            layer(0, 2048, 2048, false),
            layer(0, 2048, 2048, false),
        ] {
            v.event(&e)?;
        }
        v.event(&Event::Building(pb::PullBuilding {}))?;
        v.finish();
        let text = String::from_utf8_lossy(&v.into_inner()).into_owned();
        assert_eq!(
            text,
            "resolved sha256:1234 (2 layers, 2.0 KiB)\n\
             layer 2/2 bbbbbbbbbbbb: 10 B already here\n\
             layer 1/2 aaaaaaaaaaaa: 2.0 KiB downloaded\n\
             building the root image\n"
        );
        Ok(())
    }

    #[test]
    fn out_of_range_layer_indexes_are_ignored() -> io::Result<()> {
        let mut v = Plain::new(Vec::new());
        v.event(&layer(7, 1, 1, false))?;
        let mut b = Bars::default();
        b.event(&layer(7, 1, 1, false))?;
        b.finish();
        assert!(v.into_inner().is_empty());
        Ok(())
    }
}
