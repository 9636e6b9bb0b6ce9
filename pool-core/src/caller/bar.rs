//! Progress bars drawn with indicatif (feature `progress`).
//!
//! Thin layers over the progress hooks: [`Pool::map_progress`] draws from
//! [`Pool::map_with_progress`]'s hook, on a pool thread; [`Imap::progress_bar`] from
//! [`Imap::with_progress`], on the consuming thread. indicatif rate-limits the
//! drawing, so a hook called for every chunk costs little.

use super::inputs::Inputs;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::caller::imap::Imap;
use crate::caller::pool::Pool;
use crate::caller::result::Progress;
use crate::error::Error;
use crate::task::Task;

/// `[####----] done/total  rate/s  ETA`, on stderr (hidden when it is not a terminal).
///
/// That is the bar of a known `total`; without one (`None`), a spinner with the
/// count, the rate and the time elapsed. The style is chosen here, once: a length
/// set later by [`update`] does not turn a spinner into a bar.
fn bar(total: Option<usize>) -> ProgressBar {
    let template = match total {
        Some(_) => "{wide_bar} {pos}/{len} tasks  {per_sec}  ETA {eta}",
        None => "{spinner} {pos} tasks  {per_sec}  {elapsed}",
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    match total {
        Some(n) => ProgressBar::new(n as u64),
        None => ProgressBar::no_length(),
    }
    .with_style(style)
}

/// Moves `bar` to `p`: its length when the total is known, its position to the
/// count done.
fn update(bar: &ProgressBar, p: Progress) {
    if let Some(total) = p.total {
        bar.set_length(total as u64);
    }
    bar.set_position(p.done as u64);
}

impl Pool {
    /// [`map`](Pool::map) with progress on stderr, updated as chunks finish (Python
    /// users reach for `tqdm` here).
    ///
    /// The bar is made before the call knows its total, so it is drawn as a
    /// spinner: tasks done, rate and time elapsed, without the total or an ETA. It
    /// is finished on success and abandoned (left as it stands) on error.
    ///
    /// # Errors
    ///
    /// As [`map`](Pool::map).
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn map_progress<F, A, I>(&self, task: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize,
        I: Inputs<A>,
    {
        let shown = bar(None);
        let drawn = shown.clone();
        let result = self.map_with_progress(task, items, move |p| update(&drawn, p));
        match &result {
            Ok(_) => shown.finish(),
            Err(_) => shown.abandon(),
        }
        result
    }
}

impl<R: DeserializeOwned + Send + 'static> Imap<R> {
    /// Draws a progress bar on stderr as results arrive; it finishes when the
    /// stream does.
    ///
    /// A bar for an input of known length, a spinner otherwise. It replaces a hook
    /// set by [`with_progress`](Imap::with_progress). "Finishes" means when the
    /// count reaches the known total; a spinner, or a stream dropped before the end,
    /// is cleared when the stream is dropped (indicatif's default for a bar dropped
    /// unfinished).
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn progress_bar(self) -> Self {
        let (_, total) = self.size_hint();
        let shown = bar(total);
        self.with_progress(move |p| {
            update(&shown, p);
            if p.total == Some(p.done) {
                shown.finish();
            }
        })
    }
}
