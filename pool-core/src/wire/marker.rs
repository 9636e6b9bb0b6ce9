//! The environment marker: what the pool tells a process it starts as a worker, in
//! one environment variable, and how the process tells whether it is meant for it.
//!
//! The worker is the program re-executed with the user's own arguments untouched,
//! so what makes it a worker travels beside them, in the environment. `init()` reads
//! it ([`Marker::for_this_process`]); a process without it is an ordinary one.

/// The environment variable that makes a process a worker.
pub(crate) const MARKER_ENV: &str = "PROCPOOL_WORKER";

/// What the pool tells a worker through [`MARKER_ENV`]:
/// `1:<transport>:<parent pid>:<max frame>:<progress>:<secret>`, where `<progress>`
/// is `p` if the worker finds a progress page on its descriptor 5 and `-` if not. Its
/// `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The [`Transport::name`](crate::transport::Transport::name) to connect with.
    /// It must not contain `:`, which separates the fields.
    pub(crate) transport: String,
    /// The pid of the pool's process: a process whose parent is another is not
    /// meant (see [`Marker::for_this_process`]).
    pub(crate) parent: u32,
    /// The pool's frame cap, which the worker's link enforces too.
    pub(crate) max_frame: usize,
    /// The pool's random secret, echoed in the handshake.
    pub(crate) secret: u128,
    /// A progress page was placed for the worker.
    pub(crate) progress: bool,
}

impl std::fmt::Debug for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marker")
            .field("transport", &self.transport)
            .field("parent", &self.parent)
            .field("max_frame", &self.max_frame)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl Marker {
    /// The variable's value; the secret as 32 hex digits.
    pub(crate) fn encode(&self) -> String {
        format!(
            "1:{}:{}:{}:{}:{:032x}",
            self.transport,
            self.parent,
            self.max_frame,
            if self.progress { "p" } else { "-" },
            self.secret,
        )
    }

    /// The marker in `s`, as [`encode`](Self::encode) writes it; `None` for another
    /// format version, a missing or extra field, or a field that does not parse.
    pub(crate) fn parse(s: &str) -> Option<Marker> {
        let mut parts = s.split(':');
        if parts.next()? != "1" {
            return None;
        }
        let transport = parts.next()?.to_owned();
        let parent = parts.next()?.parse().ok()?;
        let max_frame = parts.next()?.parse().ok()?;
        let progress = match parts.next()? {
            "p" => true,
            "-" => false,
            _ => return None,
        };
        let secret = u128::from_str_radix(parts.next()?, 16).ok()?;
        parts.next().is_none().then_some(Marker {
            transport,
            parent,
            max_frame,
            secret,
            progress,
        })
    }

    /// The marker meant for this very process: set, well formed, and naming our
    /// actual parent. A child of a worker inherits the variable but has another
    /// parent, so it runs as an ordinary program.
    pub(crate) fn for_this_process() -> Option<Marker> {
        let raw = std::env::var(MARKER_ENV).ok()?;
        let marker = Marker::parse(&raw)?;
        let parent = rustix::process::getppid()?;
        (parent.as_raw_nonzero().get() as u32 == marker.parent).then_some(marker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let m = Marker {
            transport: "pipe".into(),
            parent: 42,
            max_frame: 1024,
            secret: 0xfeed_beef,
            progress: true,
        };
        assert_eq!(Marker::parse(&m.encode()), Some(m.clone()));
        let plain = Marker {
            progress: false,
            ..m.clone()
        };
        assert_eq!(Marker::parse(&plain.encode()), Some(plain));
        assert_eq!(Marker::parse("2:pipe:1:1:p:0"), None);
        assert_eq!(Marker::parse("1:pipe:x:1:p:0"), None);
        assert_eq!(Marker::parse("1:pipe:1:1:p"), None, "no secret");
        assert_eq!(Marker::parse("1:pipe:1:1:p:zz"), None);
        assert_eq!(Marker::parse("1:pipe:1:1:0"), None, "no progress field");
        assert_eq!(Marker::parse("1:pipe:1:1:x:0"), None);
        assert_eq!(Marker::parse("1:pipe:1:1:p:0:extra"), None);
        let shown = format!("{m:?}");
        assert!(
            !shown.contains("feedbeef") && !shown.contains("4276993775"),
            "{shown}"
        );
    }
}
