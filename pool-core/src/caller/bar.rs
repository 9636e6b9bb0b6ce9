//! Progress bars drawn with indicatif (feature `progress`).

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

fn update(bar: &ProgressBar, p: Progress) {
    if let Some(total) = p.total {
        bar.set_length(total as u64);
    }
    bar.set_position(p.done as u64);
}

impl Pool {
    /// [`map`](Pool::map) with a progress bar on stderr: tasks done / total, rate and
    /// ETA, updated as chunks finish (Python users reach for `tqdm` here).
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
